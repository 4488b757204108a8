"""LiveSports-3K-CC
(docs/ORIGINAL.md §LiveSports-3K-CC): generation jobs per event clip, and the A/B judge against a baseline.

Generation: the clip's pre-event ASR as previous text, the commentator query plus the title line, streaming
from `begin` for floor(end - begin) seconds; pred = the seconds' commentary joined with no separator.
Judging: for each event of the baseline file, AB asks with the model as A and BA with the baseline as A,
both against the human commentary (event_asr_text); a missing or empty model prediction sets both texts to
"". Win rate = model wins / (2N) over all N events, ties counting as losses.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from svlm_jax.eval.datasets import Event, Problems
from svlm_jax.eval.generation import Job
from svlm_jax.eval.pairwise import Question, ask_all
from svlm_jax.eval.prompts import LIVESPORTS_ANSWERS, commentator_query, livesports_messages, parse_livesports

SEED = 42  # the original's judge seed


def jobs(events: Sequence[Event]) -> list[Job]:
    """One stream per event clip (events shorter than one second are kept with 0 seconds: empty pred)."""
    return [Job(key=e.id, video=e.id, path=e.path, start=e.begin, seconds=max(0, math.floor(e.end - e.begin)),
                previous_text=e.preasr, query=commentator_query(e.title),
                meta={"video_id": e.video_id, "event_id": e.event_id, "begin": e.begin, "end": e.end})
            for e in events]


def questions(baseline: Mapping[str, str], model: Mapping[str, str], gt: Mapping[str, str]
              ) -> tuple[list[Question], Problems]:
    """AB (model first) and BA (baseline first) per baseline event. Events without ground truth are counted
    and skipped; a missing or blank model prediction blanks both texts, as the original does."""
    problems, out = Problems(), []
    for eid, base in baseline.items():
        if eid not in gt:
            problems.add("no_ground_truth", f"{eid}: not in the events file; skipped.")
            continue
        pred = model.get(eid)
        if pred is None or not pred.strip():
            problems.add("missing_prediction", f"{eid}: no model prediction; both texts set to \"\" (a loss "
                                               f"unless the judge says otherwise).")
            pred, base = "", ""
        for order, a, b in (("AB", pred, base), ("BA", base, pred)):
            out.append(Question(window=eid, order=order, texts=(gt[eid], a, b),
                                messages=livesports_messages(a, b, gt[eid]), choices=LIVESPORTS_ANSWERS,
                                parse=parse_livesports))
    return out, problems


def judge(baseline: Mapping[str, str], model: Mapping[str, str], gt: Mapping[str, str], judge, cache, *,
          concurrency: int = 8, progress: bool = True) -> tuple[dict, list[dict], Problems]:
    """Ask every question (cache first) -> (score, per-event records, problems).

    score: {"events": N, "model_wins", "win_rate_percent" = 100 * wins / (2N)}; records per event:
    {video_event_id, ab_winner, ba_winner} with "model", "baseline" or "tie". A failed question counts as
    not won and is listed in problems (a rerun asks it again)."""
    qs, problems = questions(baseline, model, gt)
    votes, failed = ask_all(qs, judge, cache, concurrency=concurrency, seed=SEED, progress=progress)
    for k, v in failed.counts.items():
        problems.counts[k] += v
    problems.messages += failed.messages
    who = {"AB": {"A": "model", "B": "baseline"}, "BA": {"A": "baseline", "B": "model"}}
    records, wins = [], 0
    for eid in dict.fromkeys(q.window for q in qs):
        rec = {"video_event_id": eid}
        for order in ("AB", "BA"):
            v = votes.get((eid, order))
            rec[f"{order.lower()}_winner"] = None if v is None else who[order].get(v, "tie")
            wins += rec[f"{order.lower()}_winner"] == "model"
        records.append(rec)
    n = len(records)
    score = {"events": n, "model_wins": wins, "win_rate_percent": round(100 * wins / (2 * n), 2) if n else None}
    return score, records, problems
