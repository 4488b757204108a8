"""Asking a judge many A/B questions: the cache first, then a bounded pool of threads, one record per answer.

`ask_all` is shared by Inf-Streams-Eval and LiveSports-3K-CC; each benchmark builds its `Question`s (prompt,
allowed answers, parser) and turns the votes into its own score.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import sys
from typing import Callable, Sequence

from tqdm import tqdm

from svlm_jax.eval.datasets import Problems
from svlm_jax.eval.judges import JudgeError
from svlm_jax.eval.judgments import JudgmentCache, question_key, text_hash


@dataclasses.dataclass(frozen=True)
class Question:
    """One judge call: `window` id and `order` ("AB" or "BA") name it; texts = (reference, first, second)
    as shown to the judge; parse maps the reply to a vote; choices are the answers a local judge scores."""

    window: str
    order: str
    texts: tuple[str, str, str]
    messages: list
    choices: tuple[str, ...]
    parse: Callable[[str], str]

    def key(self, judge_id: str) -> str:
        return question_key(judge_id, self.window, self.order, *self.texts)


def ask_all(questions: Sequence[Question], judge, cache: JudgmentCache, *, concurrency: int = 8,
            seed: int | None = None, progress: bool = True) -> tuple[dict[tuple[str, str], str], Problems]:
    """Votes for every question: {(window, order): vote}. Cached answers are reused without a request; the others
    go to `judge.ask` on `concurrency` threads and each answer is appended to `cache` as it arrives. Questions
    that fail (JudgeError) are counted in the returned Problems and left out; a rerun asks only them.
    Ctrl-C stops the pool; every answer already received stays in the cache."""
    votes: dict[tuple[str, str], str] = {}
    problems = Problems()
    todo = []
    for q in questions:
        hit = cache.get(q.key(judge.id))
        if hit is not None:
            votes[(q.window, q.order)] = hit["vote"]
        else:
            todo.append(q)

    def one(q: Question):
        reply = judge.ask(q.messages, q.choices, seed=seed)
        vote = q.parse(reply)
        ref, first, second = q.texts
        cache.put({"key": q.key(judge.id), "judge": judge.id, "window": q.window, "order": q.order,
                   "ref_sha": text_hash(ref), "a_sha": text_hash(first), "b_sha": text_hash(second),
                   "reply": reply, "vote": vote})
        return vote

    bar = tqdm(total=len(todo), desc=f"judge {judge.id}", unit="q", disable=not progress or not todo,
               file=sys.stderr)
    bar.set_postfix(cached=len(votes))
    pool = cf.ThreadPoolExecutor(max_workers=1 if getattr(judge, "serial", False) else max(1, concurrency))
    try:
        futures = {pool.submit(one, q): q for q in todo}
        for f in cf.as_completed(futures):
            q = futures[f]
            try:
                votes[(q.window, q.order)] = f.result()
            except JudgeError as e:
                problems.add("judge_error", f"{q.window} {q.order}: {e}")
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return votes, problems
