"""Resumable batched commentary generation for the benchmarks: jobs, per-second logs, merged results.

A `Job` is one fresh stream over [start, start + seconds) of a video, with its previous text and query:
an Inf-Streams-Eval game (infinite mode), one 100-s chunk of it (chunked mode), or a LiveSports-3K-CC clip.
`run_jobs` streams up to `batch` jobs at once as the slots of one `Streamer` (a finished job's slot is
closed and the next job opened in it), and writes every second to the job's log as soon as it is generated:

    <out>/seconds/<job>.jsonl   line 1: {"job": {...}}  (the job and the generation settings)
                                then one {"t": t0, "response": text, "tokens": [ids]} per second
                                and {"done": true, "seconds": n} at the end of the stream

Resuming: a job whose log ends with "done" is skipped. An unfinished one restarts its stream from the job's
start and replays the logged seconds with teacher forcing (`Streamer.step(force=...)`): each logged second's
frames go through the vision tower and prefill as before and its logged tokens are written instead of
sampled, which rebuilds exactly the cache (K/V, positions, evictions) and sampler state (keys fold in the
stream id and the second) the killed run had. Then generation continues with the next second. A torn last
line (killed mid-write) is dropped. A log written with other settings is refused rather than mixed.

On several processes (jax.distributed), process i takes jobs i, i+P, i+2P, ...; every process writes its own
logs, and `merge_inf_streams` builds merged_result.jsonl from whichever games are complete.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import sys
import time
import zlib
from typing import Any, Callable, Sequence

from tqdm import tqdm

from svlm_jax.eval.datasets import Game, Problems, phrase_before
from svlm_jax.errors import ConfigError
from svlm_jax.eval.prompts import BROADCASTER_QUERY
from svlm_jax.video import FrameStream, VideoError

START = 1000  # Inf-Streams-Eval streams every game from 1,000 s (`generate.sh`: START_TIME=1000)


@dataclasses.dataclass(frozen=True)
class Job:
    """One stream to generate: `video` (the id in merged results) over [start, start + seconds) of `path`.

    previous_text / query: the stream's previous-text block and first-second query. stream_id seeds its
    sampler (a hash of `key`, so a job samples the same in any row, batch or process). meta: extra fields
    copied to the benchmark's output (LiveSports' ids and clip bounds).
    """

    key: str
    video: str
    path: str
    start: float
    seconds: int
    previous_text: str
    query: str | None
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def stream_id(self) -> int:
        return zlib.crc32(self.key.encode("utf-8")) & 0x7FFFFFFF

    def describe(self) -> dict:
        """The job as logged in its header (previous text and query included, so a changed rule is noticed)."""
        return {"key": self.key, "video": self.video, "start": self.start, "seconds": self.seconds,
                "previous_text": self.previous_text, "query": self.query, **self.meta}


def inf_streams_jobs(games: Sequence[Game], *, start: int = START, chunk: int | None = None,
                     query: str = BROADCASTER_QUERY) -> tuple[list[Job], Problems]:
    """Jobs of Inf-Streams-Eval: per game, chunks `range(start, end, chunk)` of min(chunk, end - chunk_start)
    seconds, each a fresh stream seeded with the ground-truth words before its start (`phrase_before`).
    chunk=None is infinite mode: one stream per game from `start` to its end. Games that end before `start`
    are counted and skipped."""
    problems, jobs = Problems(), []
    for g in games:
        end = g.end
        if end <= start:
            problems.add("too_short", f"{g.key}: ends at {end} s, not after the start {start} s; skipped.")
            continue
        step = chunk or (end - start)
        for cs in range(start, end, step):
            jobs.append(Job(key=f"{g.key}@{cs}", video=g.key, path=g.path, start=float(cs),
                            seconds=min(step, end - cs), previous_text=phrase_before(g.content, cs), query=query))
    return jobs, problems


def shard(jobs: Sequence[Job], index: int | None = None, count: int | None = None) -> list[Job]:
    """This process's jobs: every count-th from `index` (default jax.process_index() of jax.process_count())."""
    if index is None or count is None:
        import jax

        index, count = jax.process_index(), jax.process_count()
    return list(jobs[index::count])


# ---------------------------------------------------------------------------- per-job logs
def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=-]", "_", key)


def log_path(out_dir: str, job: Job) -> str:
    """Where the job's per-second log lives."""
    return os.path.join(out_dir, "seconds", _safe(job.key) + ".jsonl")


@dataclasses.dataclass
class JobLog:
    """A job's log as read from disk: header, seconds so far, whether the stream finished."""

    header: dict | None
    seconds: list[dict]
    done: bool


def read_log(path: str, repair: bool = False) -> JobLog:
    """Read a job log; with repair, cut a torn last line off the file (a run killed mid-write)."""
    if not os.path.exists(path):
        return JobLog(None, [], False)
    with open(path, "rb") as f:
        data = f.read()
    good = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    if repair and len(good) != len(data):
        with open(path, "rb+") as f:
            f.truncate(len(good))
    header, seconds, done = None, [], False
    for line in good.decode("utf-8").splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if "job" in obj:
            header = obj
        elif obj.get("done"):
            done = True
        else:
            seconds.append(obj)
    return JobLog(header, seconds, done)


def _number(t: float):
    return int(t) if float(t).is_integer() else float(t)


def _logs(jobs: Sequence[Job], out_dir: str, settings: dict, repair: bool = False):
    """(job, log path, log, expected header) per job; a log written for other settings raises ConfigError."""
    for j in jobs:
        path = log_path(out_dir, j)
        log = read_log(path, repair=repair)
        want = {"job": j.describe(), "settings": settings}
        if log.header is not None and log.header != want:
            raise ConfigError(f"{path} was written for another job or other settings; use a new output directory "
                              f"or delete that file (it holds {len(log.seconds)} generated seconds).")
        yield j, path, log, want


def all_done(jobs: Sequence[Job], out_dir: str, settings: dict) -> bool:
    """Whether every job's log is finished (ConfigError if one was written with other settings)."""
    return all(log.done for _, _, log, _ in _logs(jobs, out_dir, settings))


# ---------------------------------------------------------------------------- the runner
@dataclasses.dataclass(frozen=True)
class StreamSetup:
    """What every stream shares: the model, tokenizer, StreamConfig, sampling, stop ids, seed and frames.

    preprocessing: the `checkpoint.Preprocessing` every job's frames are made with, normally the
    checkpoint's preprocessing.json with the command's flags over it (None: StreamingVLM's defaults).
    settings: a JSON-able description (checkpoint, sampling, ...) logged in each job header; resuming with
    different settings is refused.
    """

    cfg: Any
    params: Any
    tokenizer: Any
    scfg: Any
    sampling: Any
    stop_ids: tuple[int, ...] | None = None
    seed: int = 0
    preprocessing: Any = None
    settings: dict = dataclasses.field(default_factory=dict)


class _Row:
    def __init__(self, job: Job, path: str, log: JobLog, frames: FrameStream):
        self.job, self.path, self.frames = job, path, frames
        self.replay = [s["tokens"] for s in log.seconds]
        self.written = len(log.seconds)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, obj: dict) -> None:
        self.file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.frames.close()
        self.file.close()


def run_jobs(jobs: Sequence[Job], setup: StreamSetup, out_dir: str, *, batch: int = 1, progress: bool = True,
             on_second: Callable[[int], None] | None = None) -> dict:
    """Generate every unfinished job into its log (see the module docstring); returns a summary
    {"jobs", "done", "skipped_done", "seconds", "replayed", "wall_s", "rtf", "problems", "messages"}.

    One `Streamer` of `batch` slots runs the whole time: a job is a session (`Streamer.open` with its query,
    previous text and stream id), and when it ends its slot is closed and the next job opens there at once,
    so no row idles while jobs remain. on_second(n) is called after each batched step with the number of
    seconds written so far in this call. Ctrl-C (KeyboardInterrupt) closes everything and propagates; every
    generated second is already on disk.
    """
    from svlm_jax.checkpoint import Preprocessing
    from svlm_jax.stream import Streamer

    pre = setup.preprocessing if setup.preprocessing is not None else Preprocessing()
    os.makedirs(os.path.join(out_dir, "seconds"), exist_ok=True)
    problems, todo, skipped = Problems(), collections.deque(), 0
    for j, path, log, want in _logs(jobs, out_dir, setup.settings, repair=True):
        if log.done:
            skipped += 1
        else:
            todo.append((j, path, log, want))
    total_s = sum(j.seconds for j, *_ in todo)
    bar_jobs = tqdm(total=len(jobs), initial=skipped, desc="games", unit="job", disable=not progress,
                    file=sys.stderr, position=0)
    bar_s = tqdm(total=total_s, desc="seconds", unit="s", disable=not progress, file=sys.stderr, position=1)
    counts = {"written": 0, "replayed": 0, "done": 0}
    t_start = time.perf_counter()
    rows: list[_Row | None] = [None] * batch
    streamer = None
    if todo:
        streamer = Streamer(setup.cfg, setup.params, setup.tokenizer, setup.scfg, sampling=setup.sampling,
                            batch=batch, seed=setup.seed, stop_ids=setup.stop_ids)
        for b in range(batch):
            streamer.close(b)

    def fill(i: int) -> None:
        """Open the next job that has a readable video in slot i (or leave it empty)."""
        while todo:
            j, path, log, want = todo.popleft()
            try:
                frames = FrameStream.for_model(j.path, pre, start=j.start, end=j.start + j.seconds)
            except (VideoError, OSError, ValueError) as e:
                problems.add("video_error", f"{j.key}: {e}")
                bar_s.update(j.seconds)
                continue
            if log.header is None:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(json.dumps(want, ensure_ascii=False) + "\n")
            streamer.open(i, query=j.query, previous_text=j.previous_text, stream_id=j.stream_id)
            rows[i] = _Row(j, path, log, frames)
            bar_s.update(len(log.seconds))
            return

    def end(i: int, error: Exception | None = None) -> None:
        r = rows[i]
        if error is None:
            r.write({"done": True, "seconds": r.written})
            counts["done"] += 1
            bar_jobs.update(1)
        else:
            problems.add("video_error", f"{r.job.key}: {error} ({r.written} s kept; a rerun resumes)")
        bar_s.update(r.job.seconds - r.written)  # a video shorter than its job, or a broken one
        r.close()
        rows[i] = None
        streamer.close(i)
        fill(i)

    def next_second(i: int):
        while rows[i] is not None:
            try:
                return next(rows[i].frames)
            except StopIteration:
                end(i)
            except VideoError as e:
                end(i, e)
        return None

    try:
        for i in range(batch):
            fill(i)
        while any(rows):
            seconds = [next_second(i) for i in range(batch)]
            if not any(s is not None for s in seconds):
                break
            force = [r.replay[0] if s is not None and r.replay else None for r, s in zip(rows, seconds)]
            comments = streamer.step(seconds, force=force)
            for r, c, f in zip(rows, comments, force):
                if c is None:
                    continue
                if f is not None:
                    r.replay.pop(0)
                    counts["replayed"] += 1
                    continue
                toks = list(c.tokens)
                sil = streamer.silence
                shown = toks[:-len(sil)] if sil and toks[-len(sil):] == sil else toks
                r.write({"t": _number(c.t0), "response": setup.tokenizer.decode(shown), "tokens": toks})
                r.written += 1
                counts["written"] += 1
                bar_s.update(1)
            el = time.perf_counter() - t_start
            bar_s.set_postfix(rtf=f"{counts['written'] / el:.2f}x")
            if on_second is not None:
                on_second(counts["written"])
    finally:
        for r in rows:
            if r is not None:
                r.close()
        bar_s.close()
        bar_jobs.close()
    wall = time.perf_counter() - t_start
    return {"jobs": len(jobs), "done": counts["done"], "skipped_done": skipped, "seconds": counts["written"],
            "replayed": counts["replayed"], "wall_s": round(wall, 3),
            "rtf": round(counts["written"] / wall, 3) if wall > 0 else None,
            "problems": dict(problems.counts), "messages": problems.messages}


# ---------------------------------------------------------------------------- outputs
def _atomic_lines(path: str, rows: Sequence[dict]) -> None:
    tmp = f"{path}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def chunk_line(job: Job, log: JobLog) -> dict | None:
    """The original's per-chunk result line: {video, chunk_start, chunk_end = int(last end_time), items}
    with items {response, start_time, end_time = start_time + 1}; None for a job with no seconds."""
    if not log.seconds:
        return None
    items = [{"response": s["response"], "start_time": s["t"], "end_time": _number(s["t"] + 1)} for s in log.seconds]
    return {"video": job.video, "chunk_start": int(job.start), "chunk_end": int(items[-1]["end_time"]),
            "items": items}


def merge_inf_streams(jobs: Sequence[Job], out_dir: str) -> tuple[str, Problems]:
    """Write <out>/merged_result.jsonl (atomically) from the logs: one line per video whose jobs are all done,
    with min chunk_start, max chunk_end and the items of its chunks in start order (each job once, so
    re-merging never duplicates). Games with unfinished chunks are counted and left out."""
    problems, by_video = Problems(), {}
    for j in jobs:
        by_video.setdefault(j.video, []).append(j)
    rows = []
    for video in sorted(by_video):
        lines, complete = [], True
        for j in sorted(by_video[video], key=lambda j: j.start):
            log = read_log(log_path(out_dir, j))
            if not log.done:
                complete = False
                break
            line = chunk_line(j, log)
            if line is not None:
                lines.append(line)
        if not complete:
            problems.add("incomplete", f"{video}: not every chunk has finished; rerun generate to complete it.")
            continue
        if lines:
            rows.append({"video": video, "chunk_start": min(x["chunk_start"] for x in lines),
                         "chunk_end": max(x["chunk_end"] for x in lines),
                         "items": [it for x in lines for it in x["items"]]})
    path = os.path.join(out_dir, "merged_result.jsonl")
    _atomic_lines(path, rows)
    return path, problems


def write_predictions(jobs: Sequence[Job], out_dir: str, name: str = "predictions.jsonl") -> tuple[str, Problems]:
    """LiveSports-3K-CC predictions {video_id, event_id, begin, end, pred}: pred = "".join of the seconds'
    responses (the original's "".join(response[:-4]) with the " ..." already removed); finished jobs only."""
    problems, rows = Problems(), []
    for j in jobs:
        log = read_log(log_path(out_dir, j))
        if not log.done:
            problems.add("incomplete", f"{j.key}: not finished; rerun generate to complete it.")
            continue
        rows.append({**{k: j.meta[k] for k in ("video_id", "event_id", "begin", "end")},
                     "pred": "".join(s["response"] for s in log.seconds)})
    path = os.path.join(out_dir, name)
    _atomic_lines(path, rows)
    return path, problems

