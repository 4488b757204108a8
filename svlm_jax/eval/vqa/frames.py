"""The frames each benchmark's original shows the model offline, decoded with PyAV.

Two samplers (docs/ORIGINAL.md §OVO-Bench, §Video-MME, LongVideoBench, MVBench), both picking k frames at
round(linspace(0, n-1, k)):
  "ovo"        LiveCC's clip reader: the n frames whose end time lies in [start, max(end, start+1)],
               k = floor_even(min(max(n/fps*2, 4), floor_even(min(480, n)), n)); pixels per frame within
               [100*28^2, max(min(768*28^2, 77,070,336/k*2), 82,320)].
  "1fps"/"64"  qwen-vl-utils under VLMEvalKit, over the whole file (or MVBench's bounded clip):
               k = floor_even(min(max(n/fps, 4), floor_even(min(768, n)), n)) or 64 (n//2*2 if shorter);
               pixels within [128*28^2, min(768*28^2, max(min(768*28^2, 24576*28^2/k*2), 105,369))].
Frames are resized with PIL bicubic (antialiased, as torchvision's antialias=True approximates) on uint8;
the original resizes in float without rounding, so pixels can differ by one level. Frame timestamps come
from the container's packets, so only the chosen frames are converted and resized.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import av
import numpy as np
from PIL import Image

from svlm_jax.eval.vqa import protocols as P
from svlm_jax.video import VideoError, patchify_video, resize_frames, smart_resize

# MVBench's frame folders hold JPEGs at 3 frames per second (VLMEvalKit's frame_fps).
FRAME_DIR_FPS = 3.0
# Qwen2.5-VL's processor, given no fps, assumes 2 frames per second: second_per_grid_ts = 2 / 2.0
# (inferred from VLMEvalKit passing no fps, not run).
SECOND_PER_GRID = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class Clip:
    """The frames of one question: frames uint8 [k, h, w, 3]; pixel_values float32 [N, 1176];
    grid_thw int64 [1, 3] = (ceil(k/2), h/14, w/14); times [k] seconds of the chosen frames."""

    frames: np.ndarray
    pixel_values: np.ndarray
    grid_thw: np.ndarray
    times: np.ndarray
    second_per_grid_ts: float = SECOND_PER_GRID


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Presentation timestamps of a video's frames, in order: start/end [n] seconds; fps = average rate."""

    start: np.ndarray
    end: np.ndarray
    fps: float


def _frame_files(folder: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    if not files:
        raise VideoError(f"Frame folder {folder} holds no .jpg frames; re-extract the benchmark's frames.")
    return files


def timeline(path: str) -> Timeline:
    """Frame timestamps of a video file (from its packets, no decoding) or a folder of 3-fps JPEGs."""
    if os.path.isdir(path):
        n = len(_frame_files(path))
        t = np.arange(n) / FRAME_DIR_FPS
        return Timeline(t, t + 1 / FRAME_DIR_FPS, FRAME_DIR_FPS)
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(f"{path} has no video stream; the benchmark expects a video here.")
            s = c.streams.video[0]
            tb = float(s.time_base or 1)
            rate = float(s.average_rate or s.guessed_rate or 0) or 25.0
            pts, dur = [], []
            for pkt in c.demux(s):
                if pkt.pts is None:
                    continue
                pts.append(pkt.pts)
                dur.append(pkt.duration or 0)
    except av.FFmpegError as e:
        raise VideoError(f"Could not read {path} as a video ({e}); re-download or re-encode it.") from None
    if not pts:
        raise VideoError(f"{path} has no video frames; re-download or re-encode it.")
    order = np.argsort(pts, kind="stable")
    p = np.asarray(pts, np.float64)[order]
    d = np.asarray(dur, np.float64)[order]
    d = np.where(d > 0, d * tb, 1 / rate)
    start = (p - p[0]) * tb
    return Timeline(start, start + d, rate)


def ovo_indices(tl: Timeline, start: float, end: float | None) -> np.ndarray:
    """Frame indices LiveCC's OVO-Bench reader picks for the clip [start, end] (docs/ORIGINAL.md §OVO-Bench)."""
    e = tl.end
    lo = e[0] if not start else start
    hi = e[-1] if not end else end
    lo = min(max(e[0], lo), e[-1])
    hi = min(max(e[0], hi), e[-1])
    hi = max(lo + 1, hi)
    idx = np.flatnonzero((lo <= e) & (e <= hi))
    n = len(idx)
    if n == 0:
        raise VideoError(f"No frames in [{lo:.2f}, {hi:.2f}] s.")
    n_s, fps_s = max(n, 2), tl.fps
    if tl.fps < P.OVO_FPS:  # LiveCC stretches low-rate clips to 2 fps before counting
        n_s, fps_s = int(n * P.OVO_FPS / tl.fps), P.OVO_FPS
    k = P.floor_even(min(max(n_s / fps_s * P.OVO_FPS, 4), P.floor_even(min(P.OVO_MAX_FRAMES, n_s)), n_s))
    return idx[np.linspace(0, n - 1, k).round().astype(int)]


def vlm_indices(tl: Timeline, rule: str, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Frame indices qwen-vl-utils picks under VLMEvalKit: rule "1fps" or "64", over the frames whose start
    time lies in [start, end] (the whole file when end is None)."""
    idx = np.arange(len(tl.start)) if end is None else np.flatnonzero((tl.start >= start - 1e-6) &
                                                                       (tl.start <= end + 1e-6))
    n = len(idx)
    if rule == "64":
        k = 64 if n >= 64 else n // 2 * 2
    elif rule == "1fps":
        k = P.floor_even(min(max(n / tl.fps, 4), P.floor_even(min(P.VLM_MAX_FRAMES, n)), n))
    else:
        raise ValueError(f"Unknown frame rule {rule!r}; use 'ovo', '1fps' or '64'.")
    if k < 2:
        raise VideoError(f"Only {n} frames in the clip; at least 2 are needed.")
    return idx[np.linspace(0, n - 1, k).round().astype(int)]


def pixel_budget(rule: str, k: int) -> tuple[float, float]:
    """(min_pixels, max_pixels) per frame for k frames under the rule's total budget."""
    if rule == "ovo":
        return P.OVO_MIN_PIXELS, max(min(P.VLM_MAX_PIXELS, P.OVO_TOTAL_PIXELS / k * 2), P.OVO_MAX_PIXELS_FLOOR)
    return P.VLM_MIN_PIXELS, min(P.VLM_MAX_PIXELS, max(min(P.VLM_MAX_PIXELS, P.VLM_TOTAL_PIXELS / k * 2),
                                                       int(P.VLM_MIN_PIXELS * 1.05)))


def decode_frames(path: str, indices: np.ndarray, size: tuple[int, int] | None, *,
                  rule: str | None = None) -> np.ndarray:
    """Decode the frames at `indices` (into the timeline's order; repeats allowed) -> uint8 [k, h, w, 3].

    size: (h, w) to resize to, or None to pick it with smart_resize under `rule`'s budget from the first frame.
    """
    want: dict[int, list[int]] = {}
    for j, i in enumerate(indices.tolist()):
        want.setdefault(int(i), []).append(j)
    out: list[np.ndarray | None] = [None] * len(indices)

    def put(i: int, rgb: np.ndarray):
        nonlocal size
        if size is None:
            lo, hi = pixel_budget(rule or "1fps", len(indices))
            size = smart_resize(rgb.shape[0], rgb.shape[1], 28, lo, hi)
        small = resize_frames(rgb[None], *size)[0]
        for j in want.pop(i):
            out[j] = small

    if os.path.isdir(path):
        files = _frame_files(path)
        for i in sorted(want):
            put(i, np.asarray(Image.open(files[i]).convert("RGB")))
    else:
        tl_pts: dict[int, int] = {}
        try:
            with av.open(path) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                pts = sorted(p.pts for p in c.demux(s) if p.pts is not None)
                tl_pts = {p: i for i, p in enumerate(pts)}
            with av.open(path) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for n, frame in enumerate(c.decode(s)):
                    i = tl_pts.get(frame.pts, n) if frame.pts is not None else n
                    if i in want:
                        put(i, frame.to_ndarray(format="rgb24"))
                    if not want:
                        break
        except av.FFmpegError as e:
            raise VideoError(f"Decoding {path} failed ({e}); re-download or re-encode it.") from None
    if want:
        raise VideoError(f"{path}: {len(want)} of the chosen frames could not be decoded; the file is truncated.")
    return np.stack(out)


def load_clip(path: str, rule: str, start: float = 0.0, end: float | None = None) -> Clip:
    """The clip the original shows for a question: sample, decode, resize, patchify (see module docstring)."""
    tl = timeline(path)
    idx = ovo_indices(tl, start, end) if rule == "ovo" else vlm_indices(tl, rule, start, end)
    frames = decode_frames(path, idx, None, rule=rule)
    px, grid = patchify_video(frames)
    return Clip(frames, px, grid, tl.start[idx])


def clip_seconds(path: str) -> float:
    """Length of a video (or frame folder) in seconds: the end time of its last frame."""
    return float(timeline(path).end[-1])


__all__ = ["Clip", "Timeline", "timeline", "ovo_indices", "vlm_indices", "pixel_budget", "decode_frames",
           "load_clip", "clip_seconds", "SECOND_PER_GRID", "FRAME_DIR_FPS"]
