"""Data as the original reads it: whole lines, mixes with repeat counts, seek indexes, the explicit chunker."""
import json
import os

import pytest

from experiments import chunk_data
from svlm_jax.data import chunker
from svlm_jax.data.format import parse_record, record_to_json
from svlm_jax.data.mix import DataSpec, LineRef, load_mix, read_seeks, seeks_path
from svlm_jax.data.sample import record_to_chunk


def _raw(tmp_path, n=2):
    lines = []
    (tmp_path / "videos").mkdir(exist_ok=True)
    for v in range(n):
        (tmp_path / f"videos/v{v}.mp4").write_bytes(b"\x00" * 8)  # parsing only checks that it exists
        words = [(k + 0.2, k + 0.2 + 0.1 * (j + 1), f"w{v}_{k}_{j}") for k in range(30) for j in range(3)]
        lines.append(record_to_json(f"videos/v{v}.mp4", 0.0, 30.0, words, previous=f"intro {v}"))
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_seeks_path_follows_the_original():
    assert seeks_path("/d/train_s12w24_with_seeks.jsonl") == "/d/train_s12w24_seeks.jsonl"
    assert seeks_path("fg/train_fg.jsonl") == os.path.join("fg", "train_fg_seeks.jsonl")
    assert DataSpec.parse("a_with_seeks.jsonl:2") == DataSpec("a_with_seeks.jsonl", 2)
    assert DataSpec.parse("a.jsonl") == DataSpec("a.jsonl", 1)


def test_chunked_lines_read_back_whole_give_the_chunks(tmp_path):
    raw = _raw(tmp_path)
    dst = tmp_path / "train_w8o4_with_seeks.jsonl"
    cfg = chunker.ChunkConfig(window=8, overlap=4, min_words_per_second=1.0)
    assert chunker.write_chunked_jsonl(str(raw), str(dst), cfg) == (2, 2 * 7)  # starts 0, 4, ..., 20 and the tail at 22
    seeks = read_seeks(str(dst))
    assert seeks is not None and len(seeks) == 14
    want = [c for line in raw.read_text().splitlines()
            for c in chunker.chunk_record(parse_record(json.loads(line), str(tmp_path), check_video=False), cfg)]
    for ref, c in zip((LineRef(str(dst), o, str(tmp_path)) for o in seeks), want):
        rec = ref.load()
        assert rec.video == c.video and rec.start == c.start and rec.end == c.end
        assert rec.previous == c.previous.strip()
        got = record_to_chunk(rec, c.num_rounds)
        assert got.rounds == c.rounds  # the original's word rule on the written line = the chunker's rounds
    assert chunk_data.main([str(raw), str(dst)]) == 2  # never writes over an existing file without --force
    with pytest.raises(ValueError, match="overwrite its input"):
        chunker.write_chunked_jsonl(str(raw), str(raw), cfg)


def test_mix_lists_files_with_repeats_lazily_when_indexed(tmp_path):
    raw = _raw(tmp_path, n=3)
    dst = tmp_path / "chunks.jsonl"
    chunker.write_chunked_jsonl(str(raw), str(dst), chunker.ChunkConfig(window=8, overlap=4,
                                                                         min_words_per_second=1.0))
    items = load_mix([DataSpec(str(dst), 2), DataSpec(str(raw))], check_video=False, log=lambda *a: None)
    assert len(items) == 2 * 21 + 3
    assert all(isinstance(x, LineRef) for x in items[:42]) and items[:21] == items[21:42]
    assert [x.video for x in items[42:]] == [str(tmp_path / f"videos/v{v}.mp4") for v in range(3)]
    (tmp_path / "chunks_seeks.jsonl").write_text('{"not": "offsets"}')
    with pytest.raises(ValueError, match="byte offsets"):
        load_mix([DataSpec(str(dst))], log=lambda *a: None)
