"""The name world: the lane world plus state that only the commentary carries.

Everything of the lane world (`synthetic`) holds: coloured shapes enter, bounce and leave in their own
lanes, every event falls on a sampled frame, and the lane lights up during the second of each event.
What is new: every object gets a **name** when it enters, and every later call about it repeats that
name ("red square enters zed" ... "red square bounces zed" ... "red square leaves zed").

The name is shown only in the second the object enters, as a dark notch in its lit lane: the lane is
`len(NAMES)` patches wide and the notch, a black patch, sits in the column of the name's index. After that second
the frames no longer tell the name, so a later call can name the object correctly only by reading an
earlier call about it back from older commentary. An object lives 7-23 s (1-6 bounces), longer than the
training chunk and the vision window of the evaluation, so its entry has usually left the vision window
by the time it leaves. Since every call repeats the name, the latest one is a few seconds back: it
survives in the cache's text window (or, early in a stream, its text sink), or it is lost.

`write_dataset` writes the training videos, held-out streams and their ground truth in the
reference JSONL format, and a word-level tokenizer; `score` measures event recall/precision, the
accuracy of the names (the text-only state) and the same per segment of the stream.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np

from svlm_jax.data import synthetic
from svlm_jax.data.format import record_to_json
from svlm_jax.data.synthetic import ACTIONS, OBJECTS, WorldConfig

NAMES = ("ace", "max", "sam", "zed")
VOCAB = tuple(sorted(set(synthetic.VOCAB) | set(NAMES)))
NOTCH = (0, 0, 0)  # the name marker: a black patch in the lane lit for the entry


def world_config() -> WorldConfig:
    """The lane world's geometry with longer lives (1-6 bounces): 7-23 s between entry and exit."""
    return WorldConfig(bounces=(1, 6))


@dataclasses.dataclass(frozen=True)
class NamedEvent:
    """An event of a named object: when it happens, the 1-s round it is called in, and the object."""

    time: float
    round: int
    colour: str
    shape: str
    action: str
    name: str
    entered: int  # the round in which this object entered (was named)

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape} {self.action}"

    @property
    def call(self) -> str:
        return f"{self.phrase} {self.name}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects of a video (lane-world objects) and the name index of each."""

    objs: tuple
    names: tuple[int, ...]
    duration: float
    cfg: WorldConfig


def simulate(duration: float, cfg: WorldConfig, rng: np.random.Generator) -> Scene:
    """A lane-world scene of `duration` seconds with a uniformly random name for every object."""
    objs = synthetic.simulate(duration, cfg, rng)
    names = tuple(int(rng.integers(len(NAMES))) for _ in objs)
    return Scene(tuple(objs), names, duration, cfg)


def _round_of(t: float, cfg: WorldConfig) -> int:
    """The round in which an event at time t becomes visible: that of the first sample at or after t."""
    g = math.ceil(t * cfg.sample_fps - 1e-9) / cfg.sample_fps
    return int(math.floor(g + 1e-9))


def events_of(scene: Scene) -> list[NamedEvent]:
    """Every event of the scene (in round order) with its object's name and entry round."""
    out = []
    for o, k in zip(scene.objs, scene.names):
        colour, shape, _ = OBJECTS[o.kind]
        path = o.path(scene.cfg)[0]
        entered = _round_of(path[0][0], scene.cfg)
        for t, action in path:
            r = _round_of(t, scene.cfg)
            if t < scene.duration and r < scene.duration:
                out.append(NamedEvent(t, r, colour, shape, action, NAMES[k], entered))
    out.sort(key=lambda e: (e.round, e.time))
    return out


def words_of(events: Sequence[NamedEvent]) -> list[tuple[float, float, str]]:
    """Word timestamps: each round's calls (4 words each) spread evenly over (round + 0.1, round + 0.95]."""
    by_round: dict[int, list[str]] = collections.defaultdict(list)
    for e in events:
        by_round[e.round].extend(e.call.split())
    out = []
    for r, ws in sorted(by_round.items()):
        step = 0.85 / len(ws)
        for i, w in enumerate(ws):
            end = r + 0.1 + step * (i + 1)
            out.append((round(end - step * 0.8, 3), round(end, 3), w))
    return out


def render(scene: Scene, t: float) -> np.ndarray:
    """The frame at time t, uint8 [size, size, 3]: the lane-world frame plus the name notch of each
    object during the second of its entry. The notch is drawn over the object too: an entering object
    sits in an edge column, where it would hide the names of that column half the time."""
    cfg = scene.cfg
    img = synthetic.render(scene.objs, t, cfg)
    col = cfg.size // len(NAMES)
    for o, k in zip(scene.objs, scene.names):
        if cfg.highlight and synthetic._event_at(o, t) == "enters":
            img[o.kind * cfg.shape:(o.kind + 1) * cfg.shape, k * col:(k + 1) * col] = NOTCH
    return img


def write_video(path: str, scene: Scene) -> None:
    """Encode the scene as an h264 mp4 at the world's video_fps (atomically)."""
    from svlm_jax.video import write_mp4

    cfg = scene.cfg
    n = int(round(scene.duration * cfg.video_fps))
    write_mp4(path, (render(scene, i / cfg.video_fps) for i in range(n)), cfg.video_fps,
              options={"crf": "18", "preset": "veryfast"})


@dataclasses.dataclass(frozen=True)
class NameWorldSpec:
    """How much data: `train_videos` of `video_seconds` for training, `streams` held-out streams of
    `stream_seconds` for evaluation. Held-out streams are drawn from their own seed."""

    train_videos: int = 24
    video_seconds: int = 120
    streams: int = 3
    stream_seconds: int = 800
    seed: int = 0


def write_dataset(root: str, spec: NameWorldSpec, model_cfg) -> dict:
    """Write everything under `root` (skipped when `root/DONE` matches the spec).

    Returns {"train": JSONL path, "streams": JSONL path of the held-out streams, "stream_videos": [mp4],
    "stream_events": [JSON path per stream], "tokenizer": path}.
    """
    from svlm_jax.tokenizer import word_level_tokenizer

    cfg = world_config()
    n = spec.streams
    paths = {"train": os.path.join(root, "train.jsonl"), "streams": os.path.join(root, "streams.jsonl"),
             "stream_videos": [os.path.join(root, f"videos/stream_{i:03d}.mp4") for i in range(n)],
             "stream_events": [os.path.join(root, f"stream_{i:03d}_events.json") for i in range(n)],
             "tokenizer": os.path.join(root, "tokenizer.json")}
    stamp = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    done = os.path.join(root, "DONE")
    if os.path.exists(done) and open(done).read() == stamp:
        return paths
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    for split, count, seconds, seed in (("train", spec.train_videos, spec.video_seconds, spec.seed),
                                        ("stream", n, spec.stream_seconds, spec.seed + 10_000)):
        rng = np.random.default_rng(seed)
        lines = []
        for i in range(count):
            rel = f"videos/{split}_{i:03d}.mp4"
            scene = simulate(seconds, cfg, rng)
            events = events_of(scene)
            write_video(os.path.join(root, rel), scene)
            lines.append(json.dumps(record_to_json(rel, 0.0, float(seconds), words_of(events))))
            if split == "stream":
                synthetic._atomic_write(paths["stream_events"][i], json.dumps([dataclasses.asdict(e) for e in events]))
        synthetic._atomic_write(paths["train" if split == "train" else "streams"], "\n".join(lines) + "\n")
    tok = word_level_tokenizer(VOCAB, model_cfg)
    tok.save(paths["tokenizer"] + ".part")
    os.replace(paths["tokenizer"] + ".part", paths["tokenizer"])
    synthetic._atomic_write(done, stamp)
    return paths


def load_events(path: str) -> list[NamedEvent]:
    """Events written by `write_dataset`."""
    with open(path) as f:
        return [NamedEvent(**e) for e in json.load(f)]


# ------------------------------------------------------------------------------------------ scoring
def parse_calls(text: str) -> list[tuple[str, str | None]]:
    """(phrase, name or None) for each 'colour shape action [name]' in a commentary text, in order."""
    colours = {c for c, _, _ in OBJECTS}
    shapes = {s for _, s, _ in OBJECTS}
    words = text.replace(".", " ").split()
    out, i = [], 0
    while i < len(words):
        if words[i] in colours and i + 2 < len(words) and words[i + 1] in shapes and words[i + 2] in ACTIONS:
            name = words[i + 3] if i + 3 < len(words) and words[i + 3] in NAMES else None
            out.append((" ".join(words[i:i + 3]), name))
            i += 3 + (name is not None)
        else:
            i += 1
    return out


def name_slots(words: Sequence[str | None]) -> list[tuple[int, str]]:
    """Where a sequence of words (None for tokens outside the world's vocabulary) says a name, and what it
    takes to know it: [(index of the name, kind)] for every 'colour shape action name', where kind is
      entry   the action is 'enters' (the name is on screen: perception);
      copy    an earlier call of the same object in the sequence says its name (copying from the text);
      unseen  no earlier call of it is in the sequence (the name is lost).
    The most recent earlier call of the same colour and shape is the same object: an object's lane is its
    own, and a new object of that colour is announced by an entry call that is more recent."""
    colours, shapes = {c for c, _, _ in OBJECTS}, {s for _, s, _ in OBJECTS}
    out = []
    last: dict[tuple[str, str], int] = {}
    for i in range(3, len(words)):
        if words[i] in NAMES and words[i - 1] in ACTIONS and words[i - 3] in colours and words[i - 2] in shapes:
            key = (words[i - 3], words[i - 2])
            kind = "entry" if words[i - 1] == "enters" else ("copy" if key in last else "unseen")
            out.append((i, kind))
            last[key] = i
    return out


def score(events: Sequence[NamedEvent], comments: Sequence[tuple[float, str]], *, memory_after: int = 0,
          start: int = 0, end: int | None = None) -> dict[str, float]:
    """Score per-second commentary [(t0, text)] over rounds [start, end) against the stream's events.

    An event is called correctly when its phrase is said in its own round (each call matches at most
    one event). Of the correct calls, the name is checked against the object's true name:
      entry_acc   for entries (the name is on screen: perception);
      state_acc   for bounces and leaves (the name is only in older commentary: memory);
      memory_acc  for bounces and leaves more than `memory_after` rounds after the entry (pass the vision
                  window: the entry has left it, so only the text sink or window can hold the name).
    Counts come with every rate, so scores over several streams can be pooled (`pool`).
    """
    end = len(comments) if end is None else min(end, len(comments))
    truth = [e for e in events if start <= e.round < end]
    free: dict[tuple[int, str], list[NamedEvent]] = collections.defaultdict(list)
    for e in truth:
        free[(e.round, e.phrase)].append(e)
    calls = hit = 0
    named = collections.Counter()
    for t, text in comments:
        r = int(round(t))
        if not start <= r < end:
            continue
        for phrase, name in parse_calls(text):
            calls += 1
            if not free[(r, phrase)]:
                continue
            e = free[(r, phrase)].pop(0)
            hit += 1
            kind = "entry" if e.action == "enters" else "state"
            named[kind] += 1
            named[kind + "_ok"] += name == e.name
            if kind == "state" and e.round - e.entered > memory_after:
                named["memory"] += 1
                named["memory_ok"] += name == e.name
    out = {"events": len(truth), "calls": calls, "correct": hit,
           "entry_named": named["entry"], "entry_ok": named["entry_ok"],
           "state_named": named["state"], "state_ok": named["state_ok"],
           "memory_named": named["memory"], "memory_ok": named["memory_ok"]}
    return rates(out)


def rates(c: dict) -> dict:
    """Add recall, precision, entry_acc, state_acc and memory_acc to a dict of counts (NaN-free: 0 of 0 is 0)."""
    div = lambda a, b: a / b if b else 0.0  # noqa: E731
    return {**c, "recall": div(c["correct"], c["events"]), "precision": div(c["correct"], c["calls"]),
            "entry_acc": div(c["entry_ok"], c["entry_named"]), "state_acc": div(c["state_ok"], c["state_named"]),
            "memory_acc": div(c["memory_ok"], c["memory_named"])}


COUNTS = ("events", "calls", "correct", "entry_named", "entry_ok", "state_named", "state_ok", "memory_named",
          "memory_ok")


def pool(scores: Sequence[dict]) -> dict:
    """Scores of several streams summed count by count, with the rates recomputed."""
    return rates({k: sum(s[k] for s in scores) for k in COUNTS})


def segments(events: Sequence[NamedEvent], comments: Sequence[tuple[float, str]], parts: int = 5,
             memory_after: int = 0) -> list[dict]:
    """`score` over each of `parts` equal segments of the stream (the paper's Fig. 8 uses 5 of 20%)."""
    n = len(comments)
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return [score(events, comments, memory_after=memory_after, start=a, end=b) for a, b in zip(cuts, cuts[1:])]
