"""Data: the JSONL validator, the chunker, previous-text truncation, labels, batching, and Grain resume."""
import json

import jax
import numpy as np
import pytest

from svlm_jax import ModelConfig, forward, init_params
from svlm_jax.data import chunker, synthetic
from svlm_jax.data.format import Record, read_jsonl, record_to_json
from svlm_jax.data.pipeline import SKIPPED_KEY, PipelineConfig, SampleSource, train_dataset
from svlm_jax.data.sample import SampleConfig, build_sample, collate, tokenize_chunk
from svlm_jax.prompt import SILENCE
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from svlm_jax.train.loss import batch_hidden, masked_cross_entropy

CFG = ModelConfig.tiny()
WORDS = ["kick", "off", "goal", "what", "a", "save", "corner", "ball", "old", "news"]


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))


def _rec(words, start=0.0, end=10.0, previous=""):
    return Record(video="v.mp4", start=start, end=end, words=tuple(words), previous=previous)


# ------------------------------------------------------------------------------------------ validator
def _raw_stream(line, stream):
    """`line` with its text_stream replaced by `stream` as given (record_to_json would round the times)."""
    line[1]["content"][0]["text_stream"] = stream
    return line


def test_validator_skips_and_counts_bad_records(tmp_path):
    good = tmp_path / "good.mp4"
    good.write_bytes(b"\x00" * 16)
    (tmp_path / "empty.mp4").write_bytes(b"")
    words = [[0.1, 0.4, "kick"], [0.4, 0.9, "off"]]
    lines = [
        record_to_json("good.mp4", 0, 10, words),
        record_to_json("good.mp4", 0, 10, [[0.5, 0.2, "backwards"]]),  # ends before it starts: kept, counted
        # The original never reads a start and trains on negative times and on lines without words: kept.
        _raw_stream(record_to_json("good.mp4", -2, 10, []), [[-1.0, 0.2, "early"], [None, -0.5, "earlier"],
                                                            ["?", 3, "odd"]]),
        record_to_json("good.mp4", 0, 10, []),  # no words: all-silent rounds, as the original trains them
        record_to_json("missing.mp4", 0, 10, words),
        record_to_json("empty.mp4", 0, 10, words),
        record_to_json("good.mp4", 5, 5, words),  # empty span: the original finds no frame and raises
        _raw_stream(record_to_json("good.mp4", 0, 10, []), [[0.1, "late", "kick"]]),  # an end that is no number
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n" + json.dumps({"role": "user"}) + "\n"
    (tmp_path / "a.jsonl").write_text(text)
    records, report = read_jsonl(tmp_path / "a.jsonl")
    assert len(records) == 4 and records[0].video == str(good)
    assert records[0].words == ((0.1, 0.4, "kick"), (0.4, 0.9, "off"))
    assert records[1].words == ((0.5, 0.2, "backwards"),) and report.reversed_words == 1
    assert records[2].start == -2 and records[2].words == ((-1.0, 0.2, "early"), (None, -0.5, "earlier"),
                                                           (None, 3.0, "odd"))
    assert records[3].words == ()
    assert dict(report.skipped) == {"missing_video": 1, "empty_video": 1, "bad_span": 1, "malformed": 3}
    assert report.lines == 10 and report.kept == 4
    summary = report.summary()
    assert "1 words start after they end" in summary and "3 x malformed" in summary and "1 x bad_span" in summary


# ------------------------------------------------------------------------------------------ chunker
def test_chunk_starts_overlap_and_tail():
    assert chunker.chunk_starts(0, 60, 24, 12) == [0, 12, 24, 36]
    assert chunker.chunk_starts(0, 50, 24, 12) == [0, 12, 24, 26]  # tail chunk aligned to the end
    assert chunker.chunk_starts(3, 27, 24, 12) == [3]
    assert chunker.chunk_starts(0, 10, 24, 12) == [0]  # shorter than a window: one chunk of 10 rounds
    assert chunker.chunk_starts(0, 0.5, 24, 12) == []


def test_word_belongs_to_the_second_it_ends_in():
    words = [(0.2, 1.0, "kick"), (0.9, 1.2, "off"), (1.9, 2.0, "goal"), (2.5, 3.5, "save")]
    assert chunker.assign_rounds(words, 0.0, 4) == (("kick",), ("off", "goal"), (), ("save",))
    # a chunk starting at 1.0: "kick" (ends at exactly 1.0) is before it
    assert chunker.assign_rounds(words, 1.0, 3) == (("off", "goal"), (), ("save",))


def test_chunks_overlap_previous_text_and_word_filter():
    words = [(k + 0.1, k + 0.5, WORDS[k % len(WORDS)]) for k in range(20)]  # one word per second
    rec = _rec(words, 0.0, 20.0, previous="old news")
    chunks = chunker.chunk_record(rec, chunker.ChunkConfig(window=8, overlap=4, min_words_per_second=1.0))
    assert [c.start for c in chunks] == [0, 4, 8, 12]
    first, second = chunks[0], chunks[1]
    assert first.previous == "old news" and first.num_rounds == 8
    assert second.previous == "old news" + "".join(f" {w}" for _, _, w in words[:4])
    # the overlapping seconds 4..7 carry the same words in both chunks
    assert first.rounds[4:] == second.rounds[:4]
    # at 2 words per second no chunk has enough words
    assert chunker.chunk_record(rec, chunker.ChunkConfig(window=8, overlap=4, min_words_per_second=2.0)) == []


def test_chunker_never_reads_word_starts():
    """Starts that are None or after their end change nothing: words go by end time, ties in file order, and
    each chunk line writes the starts back as read, so its parse gives the chunk's rounds."""
    from svlm_jax.data.format import parse_record

    words = [(None, 0.5, "kick"), (0.9, 0.5, "off"), (-4.0, 1.5, "goal"), (None, 2.5, "save"), (3.9, 3.2, "what")]
    rec = _rec(words, 0.0, 4.0, previous="old news")
    cfg = chunker.ChunkConfig(window=2, overlap=0, min_words_per_second=0.5)
    chunks = chunker.chunk_record(rec, cfg)
    assert [(c.start, c.rounds, c.previous) for c in chunks] == [
        (0.0, (("kick", "off"), ("goal",)), "old news"),
        (2.0, (("save",), ("what",)), "old news kick off goal")]
    backs = [parse_record(json.loads(json.dumps(line)), check_video=False) for line in chunker.chunk_lines(rec, cfg)]
    assert [b.words for b in backs] == [tuple(words[:3]), tuple(words[3:])]
    assert [chunker.assign_rounds(b.words, c.start, 2) for b, c in zip(backs, chunks)] == [c.rounds for c in chunks]


def test_previous_text_keeps_first_sink_and_last_window_tokens(tok):
    prev = "".join(f" {w}" for w in WORDS * 3)  # 30 word tokens
    chunk = chunker.Chunk(video="v", start=0.0, rounds=((),), previous=prev)
    # The budgets count the block's 4 header tokens and its <|im_end|> + newline, as the original's.
    ids, _ = tokenize_chunk(tok, chunk, 1, SampleConfig(text_sink=4 + 4, text_window=3 + 2))
    text = tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    kept = text.split("<|im_start|>previous text\n")[1].split("<|im_end|>")[0]
    assert kept == " kick off goal what" + " ball old news"
    ids, _ = tokenize_chunk(tok, chunk, 1, SampleConfig(text_sink=64, text_window=64))
    assert prev in tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)


def test_labels_cover_exactly_the_assistant_content(tok):
    chunk = chunker.Chunk(video="v", start=5.0, rounds=(("kick", "off"), (), ("goal",)), previous="old")
    ids, mask = tokenize_chunk(tok, chunk, 2, SampleConfig(template="inference"))
    text = tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert "Time=6.0-7.0s" in text and text.count("<|video_pad|>") == 6
    # contiguous labelled spans, one per round: content + <|im_end|>
    spans, cur = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert [tok.tokenizer.decode(s, skip_special_tokens=False) for s in spans] == [
        " kick off ...<|im_end|>", f"{SILENCE}<|im_end|>", " goal ...<|im_end|>"]
    # every unlabelled token is template, vision or previous text: none is answer content
    assert int(mask.sum()) == sum(len(s) for s in spans)
    after_header = [i + 1 for i in range(2, len(ids)) if ids[i] == tok.encode("\n")[0]
                    and ids[i - 1] == tok.encode("assistant")[0]]
    assert all(mask[j] for j in after_header) and not mask[after_header[0] - 1]


def _fake_vision(n_rounds, grid=(1, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_rounds * int(np.prod(grid)), CFG.vision.patch_dim)).astype(np.float32), \
        np.asarray([grid])


def test_collated_batch_matches_forward(tok):
    """A padded batch row (vision padding, bucketed length) gives forward()'s logits on the real tokens."""
    params = init_params(CFG, jax.random.key(1))
    chunks = [chunker.Chunk(video="v", start=3.0, rounds=(("kick",), (), ("goal", "save")), previous="old news"),
              chunker.Chunk(video="v", start=0.0, rounds=((), ("a",)), previous="")]
    samples = [build_sample(c, tok, CFG, SampleConfig(), vision=_fake_vision(c.num_rounds, seed=i))
               for i, c in enumerate(chunks)]
    batch = collate(samples, 3, CFG, pad_id=tok.endoftext)
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["pixel_values"].shape[1] >= 48
    hidden = batch_hidden(CFG, params, batch, remat=False)
    from svlm_jax.train.loss import _head_logits

    logits = np.asarray(_head_logits(CFG, params, hidden))
    for i, (s, c) in enumerate(zip(samples, chunks)):
        t = s["input_ids"].size
        ref = forward(CFG, params, s["input_ids"][None], pixel_values_videos=s["pixel_values"],
                      video_grid_thw=s["grids"], second_per_grid_ts=[1.0] * c.num_rounds, time_mode="float")
        np.testing.assert_allclose(logits[i, :t], np.asarray(ref)[0], atol=2e-5, rtol=1e-5)
    # loss: targets are the next tokens where labelled; the empty third row contributes nothing
    ce, n = masked_cross_entropy(CFG, params, hidden, batch["targets"], batch["loss_mask"], chunk=128)
    assert float(n) == sum(int(s["label_mask"].sum()) for s in samples)
    lp = jax.nn.log_softmax(logits, axis=-1)
    want = -sum(lp[i, t, batch["targets"][i, t]] for i in range(3) for t in range(logits.shape[1])
                if batch["loss_mask"][i, t])
    np.testing.assert_allclose(float(ce), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------ Grain
@pytest.fixture(scope="module")
def video_chunks(tmp_path_factory):
    root = tmp_path_factory.mktemp("vids")
    world = synthetic.WorldConfig()
    rng = np.random.default_rng(0)
    chunks = []
    for i in range(2):
        objs = synthetic.simulate(12, world, rng)
        path = str(root / f"v{i}.mp4")
        synthetic.write_video(path, objs, 12, world)
        words = synthetic.words_of(synthetic.events_of(objs, 12, world))
        rec = Record(video=path, start=0.0, end=12.0, words=tuple(words))
        chunks += chunker.chunk_record(rec, chunker.ChunkConfig(window=4, overlap=2, min_words_per_second=0))
    (root / "broken.mp4").write_bytes(b"this is not a video")
    broken = chunker.Chunk(video=str(root / "broken.mp4"), start=0.0, rounds=((),) * 4, previous="")
    return chunks, broken


SCFG = SampleConfig(text_sink=16, text_window=16, min_pixels=56 * 56, max_pixels=56 * 56)


def test_grain_iterator_resumes_at_the_same_sample(video_chunks):
    chunks, _ = video_chunks
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(synthetic.VOCAB, CFG))
    pcfg = PipelineConfig(batch_size=2, seed=3, num_workers=0)
    it = iter(train_dataset(chunks, tok, CFG, SCFG, pcfg))
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]  # crosses an epoch boundary (10 chunks, 2 per batch)
    it2 = iter(train_dataset(chunks, tok, CFG, SCFG, pcfg))
    it2.set_state(state)
    for a in want:
        b = next(it2)
        assert a.keys() == b.keys()
        for k in a:
            if k != SKIPPED_KEY:
                np.testing.assert_array_equal(a[k], b[k])


def test_unreadable_video_is_skipped_and_counted(video_chunks):
    chunks, broken = video_chunks
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(synthetic.VOCAB, CFG))
    src = SampleSource([broken, chunks[0]], tok, CFG, SCFG)
    sample = src[0]
    assert sample[SKIPPED_KEY] == ["unreadable_video"]
    np.testing.assert_array_equal(sample["input_ids"], build_sample(chunks[0], tok, CFG, SCFG)["input_ids"])
    with pytest.raises(RuntimeError, match="could not be loaded"):
        SampleSource([broken], tok, CFG, SCFG)[0]


# ------------------------------------------------------------------------------------------ synthetic data
def test_synthetic_events_fall_on_the_grid_and_are_narrated_in_their_second():
    world = synthetic.WorldConfig()
    objs = synthetic.simulate(60, world, np.random.default_rng(1))
    events = synthetic.events_of(objs, 60, world)
    assert len(events) > 20 and {e.action for e in events} == set(synthetic.ACTIONS)
    assert all(abs(e.time * world.sample_fps - round(e.time * world.sample_fps)) < 1e-9 for e in events)
    rounds = chunker.assign_rounds(synthetic.words_of(events), 0.0, 60)
    for k, words in enumerate(rounds):
        assert [" ".join(words[i:i + 3]) for i in range(0, len(words), 3)] == \
            [e.phrase for e in events if e.round == k]
    # the lane of an object lights up during exactly the seconds of its events
    e = next(e for e in events if e.action == "bounces")
    obj = next(o for o in objs if synthetic.OBJECTS[o.kind][0] == e.colour and
               any(abs(t - e.time) < 1e-9 for t, _ in o.path_events))
    t = e.round + 0.25
    x = 1 if obj.centre(t, world)[0] > world.size / 2 else world.size - 2  # a lane pixel away from the shape
    row = obj.kind * world.shape + world.shape // 2
    assert tuple(synthetic.render(objs, t, synthetic.WorldConfig(highlight=False))[row, x]) == synthetic.BACKGROUND
    assert tuple(synthetic.render(objs, t, world)[row, x]) != synthetic.BACKGROUND
    assert tuple(synthetic.render(objs, e.round + 1.25, world)[row, x]) == synthetic.BACKGROUND


def test_score_commentary_counts_calls_per_second():
    ev = [synthetic.Event(1.0, 1, "red", "square", "enters"), synthetic.Event(3.5, 3, "blue", "triangle", "bounces")]
    comments = [(0.0, ""), (1.0, "red square enters"), (2.0, "blue triangle bounces"), (3.0, ""),
                (4.0, "green circle leaves")]
    s = synthetic.score_commentary(ev, comments)
    assert (s["events"], s["calls"], s["correct"]) == (2, 3, 1)
    assert s["recall"] == 0.5 and s["recall_1s"] == 1.0 and abs(s["precision"] - 1 / 3) < 1e-9
    assert s["events_per_min"] == 2 / (5 / 60)
    assert synthetic.parse_calls("red square enters and blue bounces yellow diamond leaves") == [
        "red square enters", "yellow diamond leaves"]
