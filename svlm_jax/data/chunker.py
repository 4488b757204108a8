"""Overlapping chunks of long annotated videos, StreamingVLM's SFT recipe.

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
    for s in chunk_starts(rec.start, rec.end, cfg.window, cfg.overlap):
        rounds = assign_rounds(rec.words, s, rounds_per_chunk)
        if sum(len(r) for r in rounds) < min_words - _EPS:
            continue
        # Words keep their leading space, as the answers' tokens do when streaming moves them here.
        previous = rec.previous + "".join(f" {w}" for _, e, w in rec.words if e <= s + _EPS)
        out.append(Chunk(video=rec.video, start=s, rounds=rounds, previous=previous, query=rec.query))
    return out


def chunk_records(records: Iterable[Record], cfg: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    """Chunks of every record, in record order."""
    return [c for r in records for c in chunk_record(r, cfg)]
