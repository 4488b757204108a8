"""Overlapping chunks of long annotated videos, StreamingVLM's SFT recipe (an explicit, offline step).

The original trains on files that are already chunked (one JSONL line = one sample, used whole);
this module makes such files from long raw annotations: `write_chunked_jsonl` (CLI:
`python -m experiments.chunk_data`) writes one line per chunk, with its words and previous text,
in the released files' layout, plus the `_seeks.jsonl` line offsets.

A record spanning [start, end] is cut into chunks of `window` seconds that begin every
`window - overlap` seconds. A chunk whose window would run past the end is replaced by one aligned to
the end, so the tail is covered too. Chunks are made of 1-second rounds; a word belongs to the round
in which it *ends*: round k of a chunk starting at s takes the words with end in (s + k, s + k + 1].
Everything said before the chunk (the record's `previous` text, then the words that end at or before
s) is the chunk's previous text; it is truncated to tokens later, when the tokenizer is known.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

from svlm_jax.data.format import Record

_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """window/overlap in seconds (reference 24/12); keep chunks with >= min_words_per_second * window words."""

    window: int = 24
    overlap: int = 12
    min_words_per_second: float = 2.0

    def __post_init__(self):
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"Chunk window {self.window} s and overlap {self.overlap} s are invalid; "
                             "use window >= 1 and 0 <= overlap < window.")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One training sample before tokenization.

    start: absolute video second of round 0; rounds: per-second word lists (len = number of rounds);
    previous: all commentary before `start`, as text.
    """

    video: str
    start: float
    rounds: tuple[tuple[str, ...], ...]
    previous: str
    query: str | None = None
    qa: tuple[tuple[str, str], ...] = ()  # per round (question, answer), "" when none; () = no qa at all

    def qa_of(self, k: int) -> tuple[str, str]:
        """Round k's (question, answer)."""
        return self.qa[k] if k < len(self.qa) else ("", "")

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)

    @property
    def end(self) -> float:
        return self.start + self.num_rounds

    @property
    def num_words(self) -> int:
        return sum(len(r) for r in self.rounds)


def round_of(word_end: float, start: float) -> int:
    """Index of the 1-second round (start + k, start + k + 1] in which a word ending at `word_end` falls."""
    return math.ceil(word_end - start - _EPS) - 1


def assign_rounds(words: Sequence[tuple[float, float, str]], start: float,
                  num_rounds: int) -> tuple[tuple[str, ...], ...]:
    """Per-round word lists for rounds starting at `start`; words ending outside the rounds are left out."""
    rounds: list[list[str]] = [[] for _ in range(num_rounds)]
    for _, end, word in words:
        k = round_of(end, start)
        if 0 <= k < num_rounds:
            rounds[k].append(word)
    return tuple(tuple(r) for r in rounds)


def chunk_starts(start: float, end: float, window: int, overlap: int) -> list[float]:
    """Start times of the chunks of [start, end]: every window - overlap seconds, plus one aligned to the end.

    A span shorter than one window gives a single chunk of its whole seconds.
    """
    length = end - start
    if length < window - _EPS:
        return [start] if length >= 1 - _EPS else []
    stride = window - overlap
    n = int(math.floor((length - window) / stride + _EPS)) + 1
    starts = [start + i * stride for i in range(n)]
    last = end - window
    if last - starts[-1] > _EPS:
        starts.append(last)
    return starts


def chunk_record(rec: Record, cfg: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    """All chunks of one record that carry enough words."""
    out = []
    length = rec.end - rec.start
    rounds_per_chunk = min(cfg.window, int(math.floor(length + _EPS)))
    min_words = cfg.min_words_per_second * rounds_per_chunk
    words = sorted(rec.words, key=lambda w: w[1])  # by end time, ties in file order; starts are never read
    for s in chunk_starts(rec.start, rec.end, cfg.window, cfg.overlap):
        rounds = assign_rounds(words, s, rounds_per_chunk)
        if sum(len(r) for r in rounds) < min_words - _EPS:
            continue
        # Words keep their leading space, as the answers' tokens do when streaming moves them here.
        previous = rec.previous + "".join(f" {w}" for _, e, w in words if e <= s + _EPS)
        out.append(Chunk(video=rec.video, start=s, rounds=rounds, previous=previous, query=rec.query))
    return out


def chunk_records(records: Iterable[Record], cfg: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    """Chunks of every record, in record order."""
    return [c for r in records for c in chunk_record(r, cfg)]


def chunk_lines(rec: Record, cfg: ChunkConfig = ChunkConfig(), *, video: str | None = None) -> list[list[dict]]:
    """The JSON conversations of a record's chunks, in the released pre-chunked files' layout.

    Each holds the chunk's span [s, s + rounds], the words that end inside it (s, s + rounds] with their
    times, and the chunk's previous text; read back whole, it gives the chunk's rounds. `video` replaces
    the record's (resolved) video path, e.g. with the relative path of the source line.
    """
    from svlm_jax.data.format import record_to_json

    words = sorted(rec.words, key=lambda w: w[1])
    out = []
    for c in chunk_record(rec, cfg):
        inside = [w for w in words if c.start + _EPS < w[1] <= c.end + _EPS]
        out.append(record_to_json(video or rec.video, c.start, c.end, inside, previous=c.previous.strip()))
    return out


def write_chunked_jsonl(src: str, dst: str, cfg: ChunkConfig = ChunkConfig(), *,
                        video_root: str | None = None) -> tuple[int, int]:
    """Chunk every good record of JSONL `src` into JSONL `dst` (+ its `_seeks.jsonl`); (records, chunks).

    Video paths are written as they are in `src`, so `dst` must sit where they resolve (same directory
    or a --video-root). Writes to temporary names and renames; never writes over `src`.
    """
    import json
    import os

    from svlm_jax.data.format import iter_jsonl, ValidationReport
    from svlm_jax.data.mix import seeks_path

    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"The chunked output {dst} would overwrite its input; pass another path.")
    originals = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
                el = next(c for c in obj[0]["content"] if isinstance(c, dict) and "video" in c)
                originals[el["video"]] = el["video"]
            except Exception:  # noqa: BLE001 - bad lines are counted by iter_jsonl below
                continue
    root = os.path.dirname(os.path.abspath(src)) if video_root is None else video_root
    rel = {os.path.join(root, v) if not os.path.isabs(v) else v: v for v in originals}
    report = ValidationReport()
    n_rec, offsets = 0, []
    tmp = dst + ".part"
    with open(tmp, "wb") as out:
        for rec in iter_jsonl(src, video_root, report=report, check_video=False):
            n_rec += 1
            for obj in chunk_lines(rec, cfg, video=rel.get(rec.video, rec.video)):
                offsets.append(out.tell())
                out.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, dst)
    seeks = seeks_path(dst)
    with open(seeks + ".part", "w") as f:
        json.dump(offsets, f)
    os.replace(seeks + ".part", seeks)
    return n_rec, len(offsets)
