"""Inf-Streams-Eval judging and scoring
(docs/ORIGINAL.md §Inf-Streams-Eval): candidates per window, AB/BA questions, win rates.

The candidate text of a window [s, e] is assembled exactly as the original's score_segments.py: the window
is skipped unless both merged lines cover it (chunk_start <= s and e <= chunk_end); the candidate is
" ".join of the stripped `response` (else `text`) of the items with s < int(end_time) <= e, in list order,
leaving out empty ones. Each window is asked AB then BA (texts swapped, the BA vote flipped back); the win
rate pools votes over windows, deduplicated on (video, start, end).
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Mapping, Sequence

from svlm_jax.eval import metrics
from svlm_jax.eval.datasets import Problems, Window
from svlm_jax.eval.pairwise import Question, ask_all
from svlm_jax.eval.prompts import judge_messages, parse_ab


def candidate(items: Sequence[Mapping], start: int, end: int) -> str:
    """The candidate commentary of window (start, end] from a merged line's items (see the module docstring)."""
    return " ".join(text.strip() for _, text in timed_candidate(items, start, end))


def timed_candidate(items: Sequence[Mapping], start: int, end: int) -> list[tuple[float, str]]:
    """(start time, text) of the items that `candidate` uses, for the word-lag metric (an item's start time
    is its `start_time`, else end_time - 1)."""
    out = []
    for it in items:
        et = it.get("end_time")
        if et is None or not start < int(et) <= end:
            continue
        txt = it.get("response") if "response" in it else it.get("text")
        if isinstance(txt, str) and txt.strip():
            out.append((float(it.get("start_time", float(et) - 1)), txt))
    return out


@dataclasses.dataclass(frozen=True)
class Pair:
    """A window with both candidates assembled."""

    window: Window
    a: str
    b: str


def pair_windows(windows: Sequence[Window], merged_a: Mapping[str, dict], merged_b: Mapping[str, dict]
                 ) -> tuple[list[Pair], Problems]:
    """The windows both result files cover, with their candidates; the others are counted as skipped."""
    problems, pairs = Problems(), []
    for w in windows:
        a, b = merged_a.get(w.key), merged_b.get(w.key)
        if a is None or b is None:
            problems.add("not_generated", f"{w.id}: no merged line for {w.key} in {'A' if a is None else 'B'}.")
            continue
        if not (a["chunk_start"] <= w.start and w.end <= a["chunk_end"]
                and b["chunk_start"] <= w.start and w.end <= b["chunk_end"]):
            problems.add("not_covered", f"{w.id}: not covered by A [{a['chunk_start']}, {a['chunk_end']}] and "
                                        f"B [{b['chunk_start']}, {b['chunk_end']}].")
            continue
        pairs.append(Pair(w, candidate(a["items"], w.start, w.end), candidate(b["items"], w.start, w.end)))
    return pairs, problems


def questions(pair: Pair) -> list[Question]:
    """The AB and BA questions of one window (reference, A and B already cut by `judge_messages`)."""
    w, out = pair.window, []
    for order, first, second in (("AB", pair.a, pair.b), ("BA", pair.b, pair.a)):
        out.append(Question(window=w.id, order=order, texts=(w.reference, first, second),
                            messages=judge_messages(w.reference, first, second), choices=("A", "B"), parse=parse_ab))
    return out


def judge_pairs(pairs: Sequence[Pair], judge, cache, *, concurrency: int = 8, progress: bool = True
                ) -> tuple[list[dict], Problems]:
    """Ask both orders of every pair (cache first) -> per-window records in the original's score_segments
    shape {video, title, start, end, winner, votes {A, B}, judge {model, vote_ab, vote_ba}}. A window with a
    failed question is left out and counted."""
    qs = [q for p in pairs for q in questions(p)]
    votes, problems = ask_all(qs, judge, cache, concurrency=concurrency, progress=progress)
    records = []
    for p in pairs:
        ab, ba_raw = votes.get((p.window.id, "AB")), votes.get((p.window.id, "BA"))
        if ab is None or ba_raw is None:
            problems.add("unjudged_window", f"{p.window.id}: a question failed; rerun to ask it again.")
            continue
        ba = "A" if ba_raw == "B" else "B"  # BA was asked with the texts swapped
        va, vb = int(ab == "A") + int(ba == "A"), int(ab == "B") + int(ba == "B")
        records.append({"video": p.window.key, "title": p.window.title, "start": p.window.start, "end": p.window.end,
                        "winner": "A" if va > vb else "B" if vb > va else "equal", "votes": {"A": va, "B": vb},
                        "judge": {"model": judge.id, "vote_ab": ab, "vote_ba": ba}})
    return records, problems


def spans(windows: Sequence[Window]) -> dict[str, tuple[float, float]]:
    """Each game's scored span: (first window start, last window end), the range the 20% segments divide."""
    out: dict[str, tuple[float, float]] = {}
    for w in windows:
        s, e = out.get(w.key, (w.start, w.end))
        out[w.key] = (min(s, w.start), max(e, w.end))
    return out


def score(records: Sequence[Mapping], windows: Sequence[Window], *, bins: int = 5, n_boot: int = 2000,
          seed: int = 0) -> dict:
    """The win-rate report: pooled win rate of A (4 d.p., as merge_score.py) and in percent, bootstrap 95%
    interval over windows, per-video table and per-segment rates. Records are deduplicated on (video, start,
    end), keeping the first."""
    seen, recs = set(), []
    for r in records:
        k = (r["video"], r["start"], r["end"])
        if k not in seen:
            seen.add(k)
            recs.append(r)
    votes = [(r["votes"]["A"], r["votes"]["B"]) for r in recs]
    rate = metrics.win_rate(votes)
    lo, hi = metrics.bootstrap_interval(votes, n=n_boot, seed=seed)
    return {"windows": len(recs), "votes_A": sum(v[0] for v in votes), "votes_B": sum(v[1] for v in votes),
            "win_rate_A": round(rate, 4), "win_rate_A_percent": round(100 * rate, 2),
            "ci95": [round(lo, 4), round(hi, 4)], "per_video": metrics.per_video(recs),
            "segments": metrics.segment_win_rates(recs, spans(windows), bins=bins)}


def offline_metrics(pairs: Sequence[Pair], merged: Mapping[str, dict], side: str, *,
                    horizon: float = 10.0) -> dict:
    """Judge-free scores of one side ("a" or "b") against the reference windows: mean word F1 and ROUGE-L
    over windows, the median lag (s) pooled over matched reference words, and the fraction of reference words
    (of 3+ letters) matched within ±horizon seconds."""
    f1, rl, lags, n_ref = [], [], [], 0
    for p in pairs:
        w = p.window
        text = p.a if side == "a" else p.b
        f1.append(metrics.word_f1(text, w.reference))
        rl.append(metrics.rouge_l(text, w.reference))
        ref = [(ws, word) for ws, _, word in w.content]
        cand = timed_candidate(merged[w.key]["items"], w.start, w.end)
        lags += metrics.word_lags(ref, cand, horizon=horizon)
        n_ref += sum(len(x) >= 3 for _, word in ref for x in metrics.words(word))
    return {"windows": len(pairs), "word_f1": round(statistics.fmean(f1), 4) if f1 else float("nan"),
            "rouge_l": round(statistics.fmean(rl), 4) if rl else float("nan"),
            "median_lag_s": round(statistics.median(lags), 3) if lags else float("nan"),
            "matched_words": round(len(lags) / n_ref, 4) if n_ref else float("nan")}


def plot_segments(segments: Sequence[Mapping], path: str, *, label: str = "A vs B") -> str:
    """Win rate per segment of the games as bars with the 50% line (the paper's Fig. 8 shape) -> PNG."""
    from svlm_jax import figures

    fig, ax = figures.subplots(figsize=(6, 3.6))
    x = list(range(len(segments)))
    rates = [100 * g["win_rate"] if g["windows"] else 0.0 for g in segments]  # an empty segment: no bar
    ax.bar(x, rates, color="#4C72B0")
    ax.set_xticks(x, [f"{int(100 * g['lo'])}-{int(100 * g['hi'])}%" for g in segments])
    for i, g in enumerate(segments):
        ax.text(i, rates[i] + 1, f"n={g['windows']}", ha="center", va="bottom", fontsize=8)
    ax.axhline(50, color="gray", lw=1, ls="--")
    ax.set_ylim(0, 105)
    ax.set_xlabel("position in the game")
    ax.set_ylabel("win rate of A (%)")
    ax.set_title(f"Win rate per segment ({label})")
    return figures.save(fig, path)
