"""Questions asked on the live stream: each video plays through a `Streamer` with the streaming cache, its
frames made as the checkpoint was trained (its preprocessing.json; StreamingVLM's 2 FPS by default). Each
question goes into the user turn of its second (`Streamer.ask`) and is answered from the cache, with the
same option-token scoring as offline and no full-attention recompute.

Timing: a question at stream time t is asked in second s = ceil(t) - 1, the second whose frames reach t
(OVO-Bench's official clips also run to ceil(realtime)). OVO-Bench plays each video from 0 and asks all its
questions on one stream, the forward-active polls at their listed times. The other benchmarks play each
question's clip and ask at its last second. Questions of one video that fall in the same second go to
parallel "lanes" (replays of the same video), since one second's user turn holds one question.

Lanes run B at a time in the Streamer's slots (`Streamer.open` / `close`); a lane ends at its last
question. Commentary is greedy (repetition penalty 1.05, the streaming default), so a lane replays
identically and a resumed run writes the same answers.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from svlm_jax.cache import StreamConfig
from svlm_jax.config import ModelConfig
from svlm_jax.eval.vqa import frames as F
from svlm_jax.eval.vqa import protocols as P
from svlm_jax.eval.vqa import scoring
from svlm_jax.eval.vqa.records import Question
from svlm_jax.eval.vqa.results import Predictions
from svlm_jax.eval.vqa.run import record
from svlm_jax.prompt import question_text
from svlm_jax.stream import SamplingConfig, Streamer
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.video import VIDEO_MAX_PIXELS, FrameStream, VideoError

Params = dict[str, Any]
STREAM_FPS = 2
ANSWER_TOKENS = 16  # room for a free answer after the prefix (the official OVO-Bench scorer reads it)


@dataclasses.dataclass
class Lane:
    """One replay of one video: the clip [start, start + seconds) and its questions by second."""

    video: str
    start: float
    seconds: int  # seconds played: up to the last question's second
    asks: dict[int, Question]
    stream_id: int


def ask_second(t: float) -> int:
    """The second whose user turn takes a question at stream time t: ceil(t) - 1 (0 for t <= 1)."""
    return max(0, math.ceil(t - 1e-9) - 1)


def plan_lanes(questions: Sequence[Question], length=F.clip_seconds) -> list[Lane]:
    """Group questions into lanes (see module docstring); `length(video)` gives a video's seconds."""
    groups: dict[tuple[str, float], list[tuple[int, Question]]] = {}
    lengths: dict[str, float] = {}
    for q in questions:
        if q.bench == "ovo":
            start, t = 0.0, q.ask_at
        else:
            start = q.start
            if q.video not in lengths:
                lengths[q.video] = length(q.video)
            t = (min(q.end, lengths[q.video]) if q.end is not None else lengths[q.video]) - start
        groups.setdefault((q.video, start), []).append((ask_second(t), q))
    lanes: list[Lane] = []
    for (video, start), items in groups.items():
        mine: list[Lane] = []
        for s, q in items:
            lane = next((ln for ln in mine if s not in ln.asks), None)
            if lane is None:
                sid = zlib.crc32(f"{video}|{start}|{len(mine)}".encode()) & 0x7FFFFFFF
                lane = Lane(video, start, 0, {}, sid)
                mine.append(lane)
            lane.asks[s] = q
            lane.seconds = max(lane.seconds, s + 1)
        lanes += mine
    return lanes


def _seconds(lane: Lane, pre) -> FrameStream:
    """The lane's clip as seconds made with `pre` (a checkpoint.Preprocessing)."""
    end = lane.start + lane.seconds
    if os.path.isdir(lane.video):  # MVBench frame folders: JPEGs at 3 fps
        from PIL import Image

        files = F._frame_files(lane.video)
        frames = (np.asarray(Image.open(f).convert("RGB")) for f in files)
        return FrameStream.for_model(frames, pre, source_fps=F.FRAME_DIR_FPS, start=lane.start, end=end)
    return FrameStream.for_model(lane.video, pre, start=lane.start, end=end)


def stream_config(tok: ChatTokenizer, questions: Sequence[Question], *, max_pixels: int = VIDEO_MAX_PIXELS,
                  base: StreamConfig = StreamConfig(), fps: int = STREAM_FPS) -> StreamConfig:
    """The streaming defaults with room for these questions, their answer prefix and a short answer, and for
    the largest second the frame budget allows (ceil(fps / 2) 2-frame grids of max_pixels / 28^2 tokens)."""
    n_q = max(len(tok.encode(question_text(q.text, False))) for q in questions)
    prefix = max(len(tok.encode(P.PROTOCOLS[q.bench].answer_prefix)) for q in questions)
    return base.replace(vision_tokens=max_pixels // (28 * 28) * math.ceil(fps / 2), question_tokens=n_q,
                        answer_tokens=prefix + ANSWER_TOKENS)


def run_streaming(cfg: ModelConfig, params: Params, tok: ChatTokenizer, bench: str, questions: Sequence[Question],
                  preds: Predictions, *, batch: int = 4, vision_chunk: int = 16, progress: bool = True,
                  scfg: StreamConfig | None = None, min_pixels: int | None = None,
                  max_pixels: int | None = None, length=F.clip_seconds,
                  on_step=None, preprocessing=None) -> list[tuple[str, str]]:
    """Answer the questions not yet in `preds` on the live stream; returns (qid, video) of the questions whose
    video could not be decoded. vision_chunk is unused (the Streamer encodes one second at a time).
    preprocessing: the `checkpoint.Preprocessing` the frames are made with, the checkpoint's preprocessing.json
    (None: StreamingVLM's defaults); min_pixels / max_pixels, when given, win over it.
    on_step(streamer, slot, lane, second, comment) is called after every stepped second (tests use it)."""
    from svlm_jax.checkpoint import Preprocessing

    pre = (Preprocessing() if preprocessing is None else preprocessing).replace(min_pixels=min_pixels,
                                                                                max_pixels=max_pixels)
    proto = P.PROTOCOLS[bench]
    opts = scoring.option_set(bench, tok)
    unreadable: list[tuple[str, str]] = []
    lanes: list[Lane] = []
    todo_videos = {q.video for q in questions if q.qid not in preds.done}
    mine = [q for q in questions if q.video in todo_videos]  # whole videos replay, to ask in the same context
    lanes = plan_lanes(mine, length=_safe_length(length, unreadable, mine)) if mine else []
    lanes = [ln for ln in lanes if ln.video not in {v for _, v in unreadable}]
    if not lanes:
        return unreadable
    scfg = scfg or stream_config(tok, [q for ln in lanes for q in ln.asks.values()], max_pixels=pre.max_pixels,
                                 fps=pre.fps)
    st = Streamer(cfg, params, tok, scfg, sampling=SamplingConfig(greedy=True), batch=min(batch, len(lanes)),
                  keep_logits=True)
    for b in range(st.batch):
        st.close(b)
    waiting = list(lanes)
    active: list[tuple[Lane, Iterator] | None] = [None] * st.batch
    todo = sum(1 for ln in lanes for q in ln.asks.values() if q.qid not in preds.done)
    bar = tqdm(total=todo, desc=f"{proto.name} streaming", unit="q", disable=not progress)

    def start(b: int) -> None:
        while waiting:
            lane = waiting.pop(0)
            try:
                frames = _seconds(lane, pre)
            except VideoError:
                _drop(lane)
                continue
            st.open(slot=b, stream_id=lane.stream_id)
            active[b] = (lane, frames)
            return

    def _drop(lane: Lane) -> None:
        for q in lane.asks.values():
            if q.qid not in preds.done:
                unreadable.append((q.qid, q.video))
                bar.update(1)

    def stop(b: int) -> None:
        lane, frames = active[b]
        frames.close()
        st.close(b)
        active[b] = None

    try:
        for b in range(st.batch):
            start(b)
        while any(a is not None for a in active):
            seconds: list[Any] = [None] * st.batch
            asked: dict[int, Question] = {}
            for b, a in enumerate(active):
                if a is None:
                    continue
                lane, frames = a
                try:
                    sec = next(frames, None)
                except VideoError:
                    sec = None
                if sec is None:  # the video ended (or broke) before its last question
                    _drop(Lane(lane.video, lane.start, lane.seconds,
                               {s: q for s, q in lane.asks.items() if s >= _played(st, b)}, lane.stream_id))
                    stop(b)
                    start(b)
                    continue
                seconds[b] = sec
                q = lane.asks.get(sec.index)
                if q is not None:
                    st.ask(b, q.text, answer_prefix=proto.answer_prefix)
                    asked[b] = q
            if all(s is None for s in seconds):
                continue
            comments = st.step(seconds)
            if asked:
                chosen = opts.choose(np.stack([st.last_prefill_logits[b] for b in asked]))
                for (b, q), resp in zip(asked.items(), chosen):
                    if q.qid not in preds.done:
                        c = comments[b]
                        preds.write(record(q, resp, "streaming", c.answer if bench == "ovo" else None,
                                           second=int(seconds[b].index)))
                        bar.update(1)
            for b, sec in enumerate(seconds):
                if sec is None:
                    continue
                lane = active[b][0]
                if on_step is not None:
                    on_step(st, b, lane, sec, comments[b])
                if sec.index + 1 >= lane.seconds:
                    stop(b)
                    start(b)
    finally:
        for b, a in enumerate(active):
            if a is not None:
                a[1].close()
        bar.close()
    return unreadable


def _played(st: Streamer, b: int) -> int:
    return st.hosts[b].second if st.hosts else 0


def _safe_length(length, unreadable: list[tuple[str, str]], questions: Sequence[Question]):
    """`length` that records a video it cannot read as unreadable (its questions are then skipped)."""
    cache: dict[str, float] = {}

    def safe(video: str) -> float:
        if video not in cache:
            try:
                cache[video] = length(video)
            except (VideoError, OSError):
                cache[video] = 0.0
                unreadable.extend((q.qid, q.video) for q in questions if q.video == video)
        return cache[video]

    return safe
