"""Scores: the judge's pooled win rate (as the original pools it), its bootstrap interval and per-segment curve,
and judge-free text metrics (word F1, ROUGE-L, median word lag) that any commentary evaluation can reuse.

All functions are pure and take plain Python values.
"""
from __future__ import annotations

import collections
import re
import statistics
from typing import Iterable, Mapping, Sequence

import numpy as np

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text` (letters, digits, apostrophes); punctuation dropped."""
    return _WORD.findall(text.lower())


# ---------------------------------------------------------------------------- judge votes
def win_rate(votes: Iterable[tuple[int, int]]) -> float:
    """Pooled win rate of A: sum(votes for A) / max(1, sum(all votes)), over (votes_a, votes_b) per window
    (merge_score.py's win_rate_A; the paper reports 100 times it with A = the model)."""
    a = b = 0
    for va, vb in votes:
        a, b = a + va, b + vb
    return a / max(1, a + b)


def per_video(records: Iterable[Mapping]) -> dict[str, dict]:
    """Per game: windows, votes for A and B, and the same pooled ratio. records: dicts with video, votes."""
    table: dict[str, dict] = {}
    for r in records:
        row = table.setdefault(r["video"], {"windows": 0, "A": 0, "B": 0})
        row["windows"] += 1
        row["A"] += r["votes"]["A"]
        row["B"] += r["votes"]["B"]
    for row in table.values():
        row["win_rate"] = row["A"] / max(1, row["A"] + row["B"])
    return dict(sorted(table.items()))


def bootstrap_interval(votes: Sequence[tuple[int, int]], *, n: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `win_rate` over windows: resample the windows with replacement `n`
    times. votes: (votes_a, votes_b) per window. Returns (low, high); (nan, nan) without windows."""
    if not votes:
        return float("nan"), float("nan")
    v = np.asarray(votes, np.float64)  # [W, 2]
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))  # [n, W]
    a, tot = v[idx, 0].sum(1), v[idx].sum((1, 2))
    rates = a / np.maximum(1, tot)
    lo, hi = np.quantile(rates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def segment_win_rates(records: Iterable[Mapping], spans: Mapping[str, tuple[float, float]],
                      bins: int = 5) -> list[dict]:
    """Win rate per equal fraction of the games (5 bins = the paper's 20% segments, Fig. 8).

    A window falls in the bin of its start's fraction (start - s) / (e - s) of its game's span (s, e) in
    `spans` (e.g. the evaluated range of each game). Returns per bin: lo, hi (fractions), windows, A, B,
    win_rate (nan for an empty bin).
    """
    out = [{"lo": i / bins, "hi": (i + 1) / bins, "windows": 0, "A": 0, "B": 0} for i in range(bins)]
    for r in records:
        s, e = spans[r["video"]]
        frac = (r["start"] - s) / max(e - s, 1e-9)
        b = out[min(bins - 1, max(0, int(frac * bins)))]
        b["windows"] += 1
        b["A"] += r["votes"]["A"]
        b["B"] += r["votes"]["B"]
    for b in out:
        b["win_rate"] = b["A"] / (b["A"] + b["B"]) if b["A"] + b["B"] else float("nan")
    return out


# ---------------------------------------------------------------------------- judge-free metrics
def word_f1(candidate: str, reference: str) -> float:
    """Bag-of-words F1 between the candidate's and the reference's words (each word counted with multiplicity);
    0 when either is empty."""
    c, r = collections.Counter(words(candidate)), collections.Counter(words(reference))
    common = sum((c & r).values())
    if not common:
        return 0.0
    p, rec = common / sum(c.values()), common / sum(r.values())
    return 2 * p * rec / (p + rec)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences, bit-parallel (O(len(a)*len(b)/64))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(b):  # the bit vector runs over the shorter sequence
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over words: LCS / candidate length and LCS / reference length, harmonic mean; 0 if empty."""
    c, r = words(candidate), words(reference)
    lcs = lcs_length(c, r)
    if not lcs:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def word_lags(reference: Sequence[tuple[float, str]], candidate: Sequence[tuple[float, str]], *,
              horizon: float = 10.0, min_len: int = 3) -> list[float]:
    """Seconds from each reference word to the same word in the candidate (candidate time - reference time).

    reference, candidate: (time, text) pairs, e.g. the ground truth's (word start, word) and the model's
    (second, that second's commentary). Each reference word of at least `min_len` letters (short function
    words match anything) is matched, in time order, to the earliest unused candidate occurrence within
    ±`horizon` seconds; unmatched words give no lag.
    """
    cand: dict[str, list[list]] = collections.defaultdict(list)
    for t, text in sorted(candidate, key=lambda x: x[0]):
        for w in words(text):
            cand[w].append([float(t), False])
    lags = []
    for t, text in sorted(reference, key=lambda x: x[0]):
        for w in words(text):
            if len(w) < min_len:
                continue
            for occ in cand.get(w, ()):
                if not occ[1] and abs(occ[0] - t) <= horizon:
                    occ[1] = True
                    lags.append(occ[0] - float(t))
                    break
    return lags


def median_lag(reference: Sequence[tuple[float, str]], candidate: Sequence[tuple[float, str]],
               **kw) -> float:
    """Median of `word_lags` (nan when no word matches)."""
    lags = word_lags(reference, candidate, **kw)
    return statistics.median(lags) if lags else float("nan")


def text_metrics(candidate: str, reference: str) -> dict[str, float]:
    """{"word_f1", "rouge_l"} of one candidate against one reference."""
    return {"word_f1": word_f1(candidate, reference), "rouge_l": rouge_l(candidate, reference)}
