"""A synthetic live-commentary dataset that a tiny model can learn on a laptop.

Coloured shapes enter the frame from the left or right edge, cross it, bounce off the far wall one
or more times, and leave. A commentator names every event in the second in which it happens, with
three words: colour, shape, action ("red square bounces"). Each colour has its own shape and its own
horizontal lane, one vision-patch row tall, and motion is timed so that every event falls on a frame
of the model's 2-fps sampling grid, where it shows as a distinct pose: a shape cut in half by the edge
it enters or leaves through, or a shape touching a wall. A 0.24M-parameter model learns this in minutes.

`write_dataset` writes mp4s (PyAV, h264), train/val JSONL in the reference format (whole videos, and
optionally cut by the chunker into one-sample-per-line files like the released ones), a held-out long
stream with its ground-truth events, and a word-level `tokenizer.json` with the model's special ids.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np

from svlm_jax.data.format import record_to_json

# (colour, shape, RGB). Colours are far apart in RGB so 4:2:0 chroma subsampling keeps them distinct.
OBJECTS = (("red", "square", (235, 45, 45)), ("green", "circle", (40, 210, 70)),
           ("blue", "triangle", (60, 100, 250)), ("yellow", "diamond", (245, 225, 40)))
ACTIONS = ("enters", "bounces", "leaves")
VOCAB = tuple(sorted({w for c, s, _ in OBJECTS for w in (c, s)} | set(ACTIONS)))
BACKGROUND = (24, 24, 28)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """size: frame side in pixels; shape: object side (= lane height); speed in px/s; sample_fps: the model's grid.

    There is one lane per object, so size must be len(OBJECTS) * shape. The speed must make every leg of
    a path (edge to wall, wall to wall) a whole number of sampling intervals, so events land on sampled frames.
    """

    size: int = 56
    shape: int = 14
    speed: float = 14.0
    max_objects: int = 3
    bounces: tuple[int, int] = (1, 3)
    video_fps: int = 8
    sample_fps: int = 2
    highlight: bool = True

    def __post_init__(self):
        if self.size != len(OBJECTS) * self.shape:
            raise ValueError(f"Frame size {self.size} must be {len(OBJECTS)} lanes of {self.shape} px; "
                             f"use size={len(OBJECTS) * self.shape}.")
        for dist in (self.size - self.shape / 2, self.size - self.shape):
            legs = dist / self.speed * self.sample_fps
            if abs(legs - round(legs)) > 1e-9:
                raise ValueError(f"speed {self.speed} px/s takes {dist / self.speed:g} s for a {dist:g}-px leg, not a "
                                 f"multiple of 1/{self.sample_fps} s; pick a speed that divides it.")


@dataclasses.dataclass(frozen=True)
class Event:
    """An event, the time it happens, and the 1-s round where it is commentated."""

    time: float
    round: int
    colour: str
    shape: str
    action: str

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape} {self.action}"


@dataclasses.dataclass
class _Obj:
    kind: int  # index into OBJECTS, which is also its lane
    t0: float  # time the centre is at the entry edge
    sign: int  # +1: enters at the left edge moving right, -1: enters at the right edge
    speed: float
    bounces: int

    path_events: tuple[tuple[float, str], ...] = ()  # filled by simulate: path(cfg)[0]

    def path(self, cfg: WorldConfig) -> tuple[list[tuple[float, str]], float]:
        """[(time, action)] of its events and the time its centre crosses the exit edge."""
        half, s = cfg.shape / 2, cfg.size
        events = [(self.t0, "enters")]
        t = self.t0 + (s - half) / self.speed  # first contact with the far wall
        span = (s - 2 * half) / self.speed
        for _ in range(self.bounces):
            events.append((t, "bounces"))
            t += span
        # After the last bounce it runs to the other edge and leaves through it.
        t_exit = t - span + (s - half) / self.speed
        events.append((t_exit, "leaves"))
        return events, t_exit

    def centre(self, t: float, cfg: WorldConfig) -> tuple[float, float] | None:
        """Centre (x, y) at time t, or None when it is fully out of frame."""
        half, s = cfg.shape / 2, cfg.size
        events, t_exit = self.path(cfg)
        if t < self.t0 - half / self.speed or t > t_exit + half / self.speed:
            return None
        d = (t - self.t0) * self.speed  # distance travelled from the entry edge
        first = s - half  # to the far wall
        if d <= first or self.bounces == 0:
            u = d
        else:
            span = s - 2 * half
            k, r = divmod(d - first, span)
            if k >= self.bounces:  # past the last bounce: keep going out
                k, r = self.bounces - 1, d - first - (self.bounces - 1) * span
            u = s - half - r if k % 2 == 0 else half + r
        x = u if self.sign > 0 else s - u
        return x, (self.kind + 0.5) * cfg.shape


def _shape_mask(kind: str, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy, h = xx - cx, yy - cy, side / 2
    if kind == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if kind == "circle":
        return dx * dx + dy * dy <= h * h
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    if kind == "triangle":  # apex up
        return (dy <= h) & (dy >= -h) & (np.abs(dx) <= (dy + h) / 2)
    raise ValueError(f"Unknown shape {kind!r}.")


def _event_at(o: _Obj, t: float) -> str | None:
    """The action of `o` whose 1-second round contains time t, if any."""
    return next((a for te, a in o.path_events if math.floor(te + 1e-9) <= t < math.floor(te + 1e-9) + 1), None)


# How an object's lane lights up during the second of each action: (weight of the object's colour,
# weight of white); the rest is background.
LANE_GLOW = {"enters": (0.25, 0.45), "bounces": (0.6, 0.0), "leaves": (0.25, 0.0)}


def render(objs: Sequence[_Obj], t: float, cfg: WorldConfig) -> np.ndarray:
    """The frame at time t: uint8 [size, size, 3].

    With cfg.highlight, an object's lane lights up during the second of one of its events, in a tint
    of its colour that tells the action (LANE_GLOW): pale when it enters, bright when it bounces,
    faint when it leaves, like the lane lights of a bowling alley.
    """
    img = np.empty((cfg.size, cfg.size, 3), np.uint8)
    img[:] = BACKGROUND
    bg = np.asarray(BACKGROUND, np.float32)
    for o in objs:
        action = _event_at(o, t) if cfg.highlight else None
        if action is not None:
            a, w = LANE_GLOW[action]
            rgb = np.asarray(OBJECTS[o.kind][2], np.float32)
            img[o.kind * cfg.shape:(o.kind + 1) * cfg.shape] = (a * rgb + w * 255 + (1 - a - w) * bg).astype(np.uint8)
    for o in objs:
        c = o.centre(t, cfg)
        if c is None:
            continue
        _, shape, rgb = OBJECTS[o.kind]
        img[_shape_mask(shape, c[0], c[1], cfg.shape, cfg.size)] = rgb
    return img


def simulate(duration: float, cfg: WorldConfig, rng: np.random.Generator) -> list[_Obj]:
    """Objects for a video of `duration` seconds; at most max_objects on screen, one per lane."""
    objs: list[_Obj] = []
    grid = 1.0 / cfg.sample_fps
    t = float(rng.uniform(0.2, 1.5))
    while t < duration:
        t = math.ceil(t / grid - 1e-9) * grid  # entries (and so every event) on the sampling grid
        live = [o for o in objs if o.path(cfg)[1] + cfg.shape / o.speed > t]
        if len(live) < cfg.max_objects:
            free = [k for k in range(len(OBJECTS)) if k not in {o.kind for o in live}]
            kind = int(rng.choice(free))
            o = _Obj(kind=kind, t0=t, sign=int(rng.choice([-1, 1])), speed=cfg.speed,
                     bounces=int(rng.integers(cfg.bounces[0], cfg.bounces[1] + 1)))
            o.path_events = tuple(o.path(cfg)[0])
            objs.append(o)
            t += float(rng.uniform(1.0, 4.0))
        else:
            t = min(o.path(cfg)[1] for o in live) + cfg.shape / min(o.speed for o in live) + float(rng.uniform(0.3, 2))
    return objs


def events_of(objs: Sequence[_Obj], duration: float, cfg: WorldConfig) -> list[Event]:
    """Every event with the round of the first sampled frame at or after it (when it becomes visible)."""
    out = []
    for o in objs:
        colour, shape, _ = OBJECTS[o.kind]
        for t, action in o.path(cfg)[0]:
            g = math.ceil(t * cfg.sample_fps - 1e-9) / cfg.sample_fps  # first sample time >= t
            r = int(math.floor(g + 1e-9))
            if g < duration:
                out.append(Event(time=t, round=r, colour=colour, shape=shape, action=action))
    out.sort(key=lambda e: (e.round, e.time))
    return out


def words_of(events: Sequence[Event]) -> list[tuple[float, float, str]]:
    """Word timestamps: each round's words spread evenly over (round + 0.1, round + 0.95]."""
    by_round: dict[int, list[str]] = {}
    for e in events:
        by_round.setdefault(e.round, []).extend([e.colour, e.shape, e.action])
    out = []
    for r, ws in sorted(by_round.items()):
        step = 0.85 / len(ws)
        for i, w in enumerate(ws):
            end = r + 0.1 + step * (i + 1)
            out.append((round(end - step * 0.8, 3), round(end, 3), w))
    return out


def write_video(path: str, objs: Sequence[_Obj], duration: float, cfg: WorldConfig) -> None:
    """Encode the scene as h264 mp4 at video_fps (written to a temp name, then renamed)."""
    from svlm_jax.video import write_mp4

    n = int(round(duration * cfg.video_fps))
    write_mp4(path, (render(objs, i / cfg.video_fps, cfg) for i in range(n)), cfg.video_fps,
              options={"crf": "18", "preset": "veryfast"})


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """How much data to write: train/val videos of `video_seconds`, one stream of `stream_seconds`."""

    train_videos: int = 32
    val_videos: int = 4
    video_seconds: int = 120
    stream_seconds: int = 300
    seed: int = 0
    world: WorldConfig = WorldConfig()


def _write_split(root: str, name: str, n: int, seconds: int, spec: SyntheticSpec,
                 rng: np.random.Generator) -> list[list[Event]]:
    lines, all_events = [], []
    for i in range(n):
        rel = f"videos/{name}_{i:03d}.mp4"
        objs = simulate(seconds, spec.world, rng)
        events = events_of(objs, seconds, spec.world)
        write_video(os.path.join(root, rel), objs, seconds, spec.world)
        lines.append(json.dumps(record_to_json(rel, 0.0, float(seconds), words_of(events))))
        all_events.append(events)
    _atomic_write(os.path.join(root, f"{name}.jsonl"), "\n".join(lines) + "\n")
    return all_events


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_dataset(root: str, spec: SyntheticSpec, model_cfg, chunk=None) -> dict[str, str]:
    """Write the whole dataset under `root` (skipped when `root/DONE` says it is complete).

    Returns paths: train, val, stream (JSONL of whole videos), stream_video, stream_events (JSON),
    tokenizer. With `chunk` (a chunker.ChunkConfig) it also writes train_chunks / val_chunks: the
    videos cut into overlapping windows by the chunker, one sample per line, like the released files.
    """
    from svlm_jax.tokenizer import word_level_tokenizer

    paths = {"train": "train.jsonl", "val": "val.jsonl", "stream": "stream.jsonl",
             "stream_video": "videos/stream_000.mp4", "stream_events": "stream_events.json",
             "tokenizer": "tokenizer.json"}
    if chunk is not None:
        paths.update(train_chunks="train_chunks.jsonl", val_chunks="val_chunks.jsonl")
    paths = {k: os.path.join(root, v) for k, v in paths.items()}
    stamp = json.dumps([dataclasses.asdict(spec), dataclasses.asdict(chunk) if chunk else None], sort_keys=True)
    done = os.path.join(root, "DONE")
    if os.path.exists(done) and open(done).read() == stamp:
        return paths
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    _write_split(root, "train", spec.train_videos, spec.video_seconds, spec, rng)
    _write_split(root, "val", spec.val_videos, spec.video_seconds, spec, rng)
    (events,) = _write_split(root, "stream", 1, spec.stream_seconds, spec, rng)
    _atomic_write(paths["stream_events"], json.dumps([dataclasses.asdict(e) for e in events], indent=0))
    if chunk is not None:
        from svlm_jax.data.chunker import write_chunked_jsonl

        for split in ("train", "val"):
            write_chunked_jsonl(paths[split], paths[f"{split}_chunks"], chunk)
    tok = word_level_tokenizer(VOCAB, model_cfg)
    tok.save(paths["tokenizer"] + ".part")
    os.replace(paths["tokenizer"] + ".part", paths["tokenizer"])
    _atomic_write(done, stamp)
    return paths


def load_events(path: str) -> list[Event]:
    """Events written by `write_dataset`."""
    with open(path) as f:
        return [Event(**e) for e in json.load(f)]


def parse_calls(text: str) -> list[str]:
    """The event phrases ('colour shape action') found in a commentary text, in order."""
    colours = {c for c, _, _ in OBJECTS}
    shapes = {s for _, s, _ in OBJECTS}
    words = text.replace(".", " ").split()
    out, i = [], 0
    while i < len(words):
        if (words[i] in colours and i + 2 < len(words) and words[i + 1] in shapes
                and words[i + 2] in ACTIONS):
            out.append(" ".join(words[i:i + 3]))
            i += 3
        else:
            i += 1
    return out


def score_commentary(events: Sequence[Event], comments: Sequence[tuple[float, str]]) -> dict[str, float]:
    """Score per-second commentary [(t0, text)] against the true events of the same stream.

    An event is named correctly when its phrase is called in its own round (and, for the `_1s` figures,
    in that round or a neighbour). Every call matches at most one event; the rest are wrong or extra.
    Rates are per minute of stream.
    """
    n = len(comments)
    minutes = max(n, 1) / 60
    truth = [e for e in events if e.round < n]
    calls = [(int(round(t)), p) for t, text in comments for p in parse_calls(text)]

    def match(tol: int) -> int:
        free = collections.Counter((e.round, e.phrase) for e in truth)
        hit = 0
        for r, p in calls:
            for d in sorted(range(-tol, tol + 1), key=abs):
                if free[(r + d, p)] > 0:
                    free[(r + d, p)] -= 1
                    hit += 1
                    break
        return hit

    exact, near = match(0), match(1)
    return {"events": len(truth), "calls": len(calls), "correct": exact,
            "events_per_min": len(truth) / minutes, "correct_per_min": exact / minutes,
            "wrong_per_min": (len(calls) - exact) / minutes,
            "recall": exact / max(len(truth), 1), "precision": exact / max(len(calls), 1),
            "recall_1s": near / max(len(truth), 1), "precision_1s": near / max(len(calls), 1)}
