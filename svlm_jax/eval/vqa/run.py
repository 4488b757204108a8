"""Drive a benchmark through a model, offline or on the live stream, with resume and a progress bar.

`run_offline` answers each question as the original does (`offline.py`); `run_streaming` plays each video
through a `Streamer` and asks its questions on the live cache (`streaming.py`). Both append every answer to
a `results.Predictions` file as it comes, skip questions already there, and return the questions whose
video could not be decoded (counted and skipped).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from svlm_jax.config import ModelConfig
from svlm_jax.eval.vqa import frames as F
from svlm_jax.eval.vqa import protocols as P
from svlm_jax.eval.vqa import scoring
from svlm_jax.eval.vqa.offline import Prompt, chat_ids, last_logits
from svlm_jax.eval.vqa.records import Question
from svlm_jax.eval.vqa.results import Predictions
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.video import VideoError

Params = dict[str, Any]


def record(q: Question, response: str, mode: str, official: str | None = None, **more) -> dict[str, Any]:
    """The predictions-file line of one answered question (no timings, so a resumed run writes the same)."""
    rec = {"qid": q.qid, "task": q.task, "group": q.group, "mode": mode, "answer": q.answer,
           "response": response, "correct": scoring.is_correct(q.bench, response, q.answer)}
    if q.bench == "ovo":
        rec["official_response"] = official
        rec["official_correct"] = None if official is None else P.ovo_official_correct(
            q.task, official, q.extra["truth"])
    rec.update(more)
    return rec


def _ahead(items: Iterable[Any], fn: Callable[[Any], Any], depth: int = 4) -> Iterator[tuple[Any, Any]]:
    """Yield (item, fn(item)) in order, computing up to `depth` ahead on one background thread
    (video decoding overlaps the model). An exception from fn is yielded as the result."""
    def safe(x):
        try:
            return fn(x)
        except (VideoError, ValueError, OSError) as e:  # a broken or unusable video (e.g. frames under 28 px)
            return e

    with cf.ThreadPoolExecutor(1) as ex:
        queue: collections.deque = collections.deque()
        it = iter(items)
        for x in it:
            queue.append((x, ex.submit(safe, x)))
            if len(queue) >= depth:
                y, fut = queue.popleft()
                yield y, fut.result()
        while queue:
            y, fut = queue.popleft()
            yield y, fut.result()


def prompt_for(cfg: ModelConfig, tok: ChatTokenizer, q: Question, clip: F.Clip | None = None) -> Prompt:
    """The offline prompt of question q: its clip (decoded here unless given) in the original's template."""
    proto = P.PROTOCOLS[q.bench]
    clip = clip if clip is not None else F.load_clip(q.video, proto.frames, q.start, q.end)
    n_video = int(np.prod(clip.grid_thw)) // cfg.vision.merge_unit
    ids = chat_ids(tok, n_video=n_video, text=q.text, pre_text=q.pre_text, answer_prefix=proto.answer_prefix)
    return Prompt(ids, clip.pixel_values, tuple(int(x) for x in clip.grid_thw[0]), clip.second_per_grid_ts)


def run_offline(cfg: ModelConfig, params: Params, tok: ChatTokenizer, bench: str, questions: Sequence[Question],
                preds: Predictions, *, batch: int = 4, attn_chunk: int | None = 1024, vision_chunk: int = 16,
                progress: bool = True) -> list[tuple[str, str]]:
    """Answer the questions not yet in `preds` offline, `batch` at a time; returns (qid, video) of the
    questions whose video could not be decoded."""
    proto = P.PROTOCOLS[bench]
    opts = scoring.option_set(bench, tok)
    todo = [q for q in questions if q.qid not in preds.done]
    last: dict[tuple, F.Clip] = {}

    def prepare(q: Question) -> Prompt:
        key = (q.video, proto.frames, q.start, q.end)
        if key not in last:  # consecutive questions on one clip decode it once
            last.clear()
            last[key] = F.load_clip(q.video, proto.frames, q.start, q.end)
        return prompt_for(cfg, tok, q, last[key])

    unreadable: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), desc=f"{proto.name} offline", unit="q", disable=not progress)
    pending: list[tuple[Question, Prompt]] = []

    def flush():
        if not pending:
            return
        logits = last_logits(cfg, params, [p for _, p in pending], attn_chunk=attn_chunk, vision_chunk=vision_chunk,
                             batch=batch)
        chosen = opts.choose(logits)
        free = np.argmax(logits, axis=-1)
        for (q, _), resp, tokid in zip(pending, chosen, free):
            preds.write(record(q, resp, "offline", tok.decode([int(tokid)]) if bench == "ovo" else None))
        bar.update(len(pending))
        pending.clear()

    try:
        for q, prompt in _ahead(todo, prepare):
            if isinstance(prompt, Exception):
                unreadable.append((q.qid, q.video))
                bar.update(1)
                bar.set_postfix(unreadable=len(unreadable))
                continue
            pending.append((q, prompt))
            if len(pending) == batch:
                flush()
        flush()
    finally:
        bar.close()
    return unreadable
