"""Video input for Qwen2.5-VL: frames in, `pixel_values` out, and a threaded per-second live stream.

Three layers, each usable on its own:

1. Preprocessing that reproduces transformers 4.52.4's processors bit for bit: `smart_resize` picks a
   size that is a multiple of 28 within a pixel budget, frames are resized (PIL bicubic on uint8, or as
   torchvision does it), normalised with the CLIP mean/std exactly as the video processor (videos) or the
   slow image processor (images) computes it, and cut into rows of 3*2*14*14 values.
2. `read_frames` decodes a file, URL or camera with PyAV and samples it on a strict 1/fps grid;
   `read_clip` and `FrameStream(sampling="original")` pick frames as the original StreamingVLM does, on
   decord's float32 frame times (`decord_times`, `frame_times`).
3. `FrameStream` turns any source into one `Second` of preprocessed frames at a time, with decoding and
   preprocessing in a background thread so they never block the model.
"""
from __future__ import annotations

import dataclasses
import math
import os
import queue
import re
import threading
from fractions import Fraction
from typing import Any, Iterable, Iterator, Sequence

import av
import numpy as np
from PIL import Image

from svlm_jax import tv_resize
from svlm_jax.errors import VideoError  # re-exported: the video domain's error type

# OpenAI CLIP normalisation, shared by the Qwen2-VL and Qwen2.5-VL processors.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE = 14, 2, 2
# HF image-processor defaults (also `smart_resize`'s defaults).
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 56 * 56, 28 * 28 * 1280
# StreamingVLM's per-frame video budget: 100 to 768 merged tokens per 2-frame grid.
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 100 * 28 * 28, 768 * 28 * 28
MAX_FPS = 8  # the paper's upper bound on one H100
DEFAULT_TIMEOUT_S = 10.0
_EPS = 1e-6  # tolerance (seconds) when comparing float timestamps with grid times



# --------------------------------------------------------------------------------------------------
# Preprocessing (parity with transformers 4.52.4 Qwen2VLImageProcessor)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) HF resizes a frame to: multiples of `factor`, area in [min_pixels, max_pixels].

    Both sides are rounded to the nearest multiple of `factor` (Python's round, half to even, as HF);
    if the area leaves the budget, both are rescaled by one factor keeping the aspect ratio.
    """
    if height < factor or width < factor:
        raise ValueError(f"Frame of {height}x{width} pixels is too small: both sides must be at least {factor}; "
                         f"upscale it or use a larger source.")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"Frame of {height}x{width} pixels has aspect ratio "
                         f"{max(height, width) / min(height, width):.1f}, above the limit of 200; crop it first.")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}; pass min_pixels <= max_pixels.")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = math.floor(height / scale / factor) * factor
        w = math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


def _check_frames(frames, what: str = "frames") -> np.ndarray:
    """Validate and return uint8 RGB frames [T, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty uint8 array [T, H, W, 3] (RGB); got dtype {frames.dtype} "
                         f"and shape {frames.shape}.")
    return frames


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 frames [T, H, W, 3] to [T, height, width, 3] with PIL bicubic, as HF's slow processor.

    Frames already at the target size are returned unchanged (PIL would only copy them).
    """
    frames = _check_frames(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    out = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    return np.stack(out)  # [T, height, width, 3]


def _image_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[256, 3] float32: every uint8 level normalised as the slow `Qwen2VLImageProcessor` does it (images)."""
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # rescale in float64, then cast
    return (levels[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _video_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[256, 3] float32: every uint8 level normalised as transformers 4.52.4's `Qwen2VLVideoProcessor` does it.

    That is the processor the original's `processor(videos=...)` runs, in streaming and in training, even with
    use_fast=False: rescale and normalise are fused (`BaseImageProcessorFast._fuse_mean_std_and_rescale_factor`),
    mean and std become float32 tensors multiplied by 1/rescale_factor (255) in float32, then (x - mean) / std
    in float32. It differs from the image processor's two steps by up to 2 ulp in 9 of 10 values.
    """
    scale = np.float32(1.0 / (1 / 255))
    mean32, std32 = np.asarray(mean, np.float32) * scale, np.asarray(std, np.float32) * scale
    return (np.arange(256, dtype=np.float32)[:, None] - mean32) / std32


# A uint8 input has 256 levels, so a gather from one of these tables equals the processor's arithmetic exactly.
_NORMALIZE = {"video": _video_table(CLIP_MEAN, CLIP_STD), "image": _image_table(CLIP_MEAN, CLIP_STD)}  # [256, 3]


def normalize_frames(frames: np.ndarray, processor: str = "video") -> np.ndarray:
    """uint8 frames [..., 3] -> float32 [..., 3]: (x/255 - CLIP_MEAN) / CLIP_STD, bit-equal to HF's processor.

    processor: "video" (`Qwen2VLVideoProcessor`, what videos go through) or "image" (`Qwen2VLImageProcessor`).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB [..., 3]; got dtype {frames.dtype} and shape {frames.shape}.")
    return _NORMALIZE[processor][frames, np.arange(3)]


def patchify_video(frames: np.ndarray, *, patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                   merge_size: int = MERGE_SIZE, processor: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """Normalise and patchify frames already at a multiple of patch_size * merge_size.

    frames: uint8 [T, H, W, 3]. An odd T is padded by repeating the last frame, as HF does. processor: whose
    normalisation to reproduce bit for bit (`normalize_frames`): "video" (default) or "image".
    Returns pixel_values_videos [gt*gh*gw, 3*tp*p*p] float32 in row order (t, h_blk, w_blk, mh, mw),
    each row flattened in (C, t, y, x) order, and video_grid_thw [1, 3] int64 = (gt, gh, gw).
    """
    frames = _check_frames(frames)
    t, h, w, c = frames.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"Frames of {h}x{w} pixels are not multiples of {unit}; resize them with smart_resize + "
                         f"resize_frames, or call preprocess_video.")
    if t % temporal_patch_size:
        pad = np.repeat(frames[-1:], temporal_patch_size - t % temporal_patch_size, axis=0)
        frames = np.concatenate([frames, pad])
        t = frames.shape[0]
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    m, p = merge_size, patch_size
    x = frames.reshape(gt, temporal_patch_size, gh // m, m, p, gw // m, m, p, c)
    # -> (gt, h_blk, w_blk, mh, mw, C, tp, py, px); move bytes first, normalise after (4x less memory traffic).
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    chan = np.arange(c).reshape(1, 1, 1, 1, 1, c, 1, 1, 1)
    rows = _NORMALIZE[processor][x, chan].reshape(gt * gh * gw, c * temporal_patch_size * p * p)  # [N, 1176]
    return rows, np.array([[gt, gh, gw]], np.int64)


def patchify_image(image: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image [H, W, 3] (sides multiples of 28) -> (pixel_values [N, 1176], image_grid_thw [1, 3]).

    The image is repeated to fill one temporal patch of 2 frames, and normalised, as HF's image processor
    does. Keywords as `patchify_video`.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be uint8 [H, W, 3]; got shape {image.shape}.")
    return patchify_video(image[None], processor="image", **kw)


def preprocess_video(frames: np.ndarray, *, min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                     patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                     merge_size: int = MERGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [T, H, W, 3] -> (pixel_values_videos [N, 1176] float32, video_grid_thw [1, 3] int64).

    `Qwen2VLImageProcessor(min_pixels=, max_pixels=)(images=None, videos=[frames])`'s steps: smart_resize of
    the frame size, PIL bicubic resize, normalise (as the video processor does: within 2 ulp of that slow
    processor's), patchify. The defaults are StreamingVLM's per-frame budget.
    """
    frames = _check_frames(frames)
    h, w = smart_resize(frames.shape[1], frames.shape[2], patch_size * merge_size, min_pixels, max_pixels)
    return patchify_video(resize_frames(frames, h, w), patch_size=patch_size,
                          temporal_patch_size=temporal_patch_size, merge_size=merge_size)


def preprocess_image(image: np.ndarray, *, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS,
                     **kw) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [H, W, 3] -> (pixel_values [N, 1176] float32, image_grid_thw [1, 3] int64), as HF's images=[image].

    Defaults are HF's image budget (56*56 to 28*28*1280 pixels). Keywords as `preprocess_video`.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be uint8 [H, W, 3]; got shape {image.shape}.")
    return preprocess_video(image[None], min_pixels=min_pixels, max_pixels=max_pixels, **kw)


# --------------------------------------------------------------------------------------------------
# Frame reading (PyAV)

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _kind(source: str) -> str:
    if _URL.match(source):
        return "url"
    if source.startswith("/dev/video"):
        return "camera"
    return "file"


def _looks_like_text(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text and all(ch.isprintable() or ch.isspace() for ch in text)


def _open(source: str, kind: str, timeout: float, options: dict[str, str] | None):
    """Open `source` with PyAV and return (container, video stream); every failure is a VideoError."""
    if kind == "file":
        if not os.path.exists(source):
            raise VideoError(f"Video file not found: {source!r}; check the path.")
        if os.path.isdir(source):
            raise VideoError(f"{source!r} is a directory, not a video file; pass the path of a video file.")
        if os.path.getsize(source) == 0:
            raise VideoError(f"Video file {source!r} is empty (0 bytes); re-download or re-encode it.")
    kw: dict[str, Any] = {"options": dict(options or {})}
    if kind == "url":
        kw["timeout"] = (timeout, timeout)  # (open, read) seconds, so an unreachable stream fails fast
    if kind == "camera":
        kw["format"] = "v4l2"
    try:
        container = av.open(source, **kw)
    except (av.FFmpegError, OSError) as e:
        if kind == "url":
            raise VideoError(f"Could not open stream {source!r} ({e}; timeout {timeout:g} s); check that it is "
                             f"running and that the address is right.") from e
        if kind == "camera":
            raise VideoError(f"Could not open camera {source!r} ({e}); check that the device exists and is not "
                             f"in use (list devices with `v4l2-ctl --list-devices`).") from e
        hint = " It looks like a text file." if _looks_like_text(source) else ""
        raise VideoError(f"Could not read {source!r} as a video: it is not a video file, or it is truncated or "
                         f"corrupt ({e}).{hint}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(f"{source!r} has no video stream (streams: {', '.join(kinds)}); pass a source with video.")
    return container, container.streams.video[0]


def _grid_sample(timed: Iterable[tuple[float, float, Any]], fps: float, start: float,
                 end: float | None) -> Iterator[tuple[float, Any]]:
    """Sample (time, duration, frame) triples in presentation order on the grid start + k/fps.

    Grid time g gets the latest frame with time <= g, which is what a live viewer sees at g; it is
    known once a later frame arrives (or the stream ends). A grid time before the first frame gets the
    first frame. The last frame covers [time, time + duration). Stops before `end` (exclusive).
    """
    k, prev = 0, None
    for t, dur, frame in timed:
        while True:
            g = start + k / fps
            if end is not None and g >= end - _EPS:
                return
            if t <= g + _EPS:  # this frame is shown at g, unless a later one is too
                break
            yield g, (prev[2] if prev is not None else frame)
            k += 1
        prev = (t, dur, frame)
    if prev is None:
        return
    t_last, dur_last, frame = prev
    while True:
        g = start + k / fps
        if end is not None and g >= end - _EPS:
            return
        if not (g <= t_last + _EPS or g < t_last + dur_last - _EPS):
            return
        yield g, frame
        k += 1


def _decoded(container, stream, source: str, kind: str, start: float) -> Iterator[tuple[int, int, int, Fraction, Any]]:
    """Decode `stream` from about `start` s: (pts, origin, duration, time_base, av.VideoFrame) in presentation order.

    pts and duration are integer ticks of time_base; a frame's duration is that of the packet that carried
    it (the container's, which FFmpeg fills from the frame rate where the container has none), 0 when
    unknown. origin is the stream's start_time for files and VOD URLs, the first frame's pts for live
    sources. Frames without a pts (raw elementary streams) are counted instead, in ticks of 1/frame rate.
    """
    tb = stream.time_base or Fraction(1, 1)
    rate = stream.average_rate or stream.guessed_rate
    seekable = kind == "file" or (kind == "url" and container.duration is not None)
    # Files (and VOD URLs) count from the stream's start time; live sources from their first frame.
    origin = stream.start_time if (seekable and stream.start_time is not None) else None
    if start > 0 and seekable:
        try:
            container.seek((origin or 0) + int(start / tb), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0, stream=stream)  # fall back to decoding from the top and skipping
    default_dur = 1 / Fraction(rate) if rate else Fraction(0)
    durations: dict[int, int] = {}  # packet pts -> packet duration, until its frame is out of the decoder
    reached, i = 0.0, 0
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                durations[packet.pts] = packet.duration or 0
            for frame in packet.decode():
                if frame.pts is None:
                    pts, org, dur, ftb = i, 0, 1, (default_dur or Fraction(1, 1))
                else:
                    if origin is None:
                        origin = frame.pts
                    dur = durations.pop(frame.pts, None)
                    pts, org, dur, ftb = frame.pts, origin, (frame.duration or 0) if dur is None else dur, tb
                    if len(durations) > 256:  # packets that made no frame: forget the old ones
                        durations = {p: d for p, d in durations.items() if p > frame.pts}
                reached = float((pts - org) * ftb + (dur * ftb if dur else default_dur))
                i += 1
                yield pts, org, dur, ftb, frame
    except av.FFmpegError as e:
        raise VideoError(f"Decoding {source!r} failed near {reached:.2f} s ({e}); the "
                         f"{'stream broke off' if kind != 'file' else 'file is truncated or corrupt'}.") from e
    if kind == "file":
        _check_complete(container, stream, source, reached)


def _timed_av_frames(container, stream, source: str, kind: str, start: float) -> Iterator[tuple[float, float, Any]]:
    """Decode `stream`, yielding (seconds since the stream origin, duration in seconds, av.VideoFrame).

    Exact rational seconds (float64), for grid sampling; a frame of unknown duration lasts 1/frame rate.
    """
    rate = stream.average_rate or stream.guessed_rate
    default_dur = float(1 / rate) if rate else 0.0
    for pts, origin, dur, tb, frame in _decoded(container, stream, source, kind, start):
        yield float((pts - origin) * tb), (float(dur * tb) if dur else default_dur), frame


def _decord_timed(container, stream, source: str, kind: str,
                  start: float) -> Iterator[tuple[np.float32, np.float32, Any]]:
    """Decode `stream`, yielding (start, end, av.VideoFrame) with decord's float32 frame times (`decord_times`)."""
    for pts, origin, dur, tb, frame in _decoded(container, stream, source, kind, start):
        (s, e), = decord_times([pts], [dur], origin, tb)
        yield s, e, frame


def decord_times(pts: Sequence[int], durations: Sequence[int], start_time: int,
                 time_base: Fraction | float) -> np.ndarray:
    """Frame times [N, 2] float32 (start, end in seconds) as decord 0.6.0 computes them from packets.

    pts, durations: [N] integer ticks of time_base per packet; start_time: the stream's start_time in
    ticks; time_base: the stream's (a Fraction) or its value in seconds (a float). decord
    (`VideoReader::IndexKeyframes` and `GetFramePTS` in src/video/video_reader.cc) stores start_time in a
    float, so `pts - start_time` is float32 arithmetic (pts > 2^24 ticks are rounded first, e.g. after
    186 s at 1/90000); that is multiplied by num/den in float64 and stored as float32. A frame ends at
    pts + duration, so a packet without a duration ends where it starts.
    """
    pts = np.asarray(pts, np.int64)  # [N]
    ticks = pts + np.asarray(durations, np.int64)  # [N]
    if isinstance(time_base, Fraction):
        num, den = time_base.numerator, time_base.denominator
        factor = num / den if num and den else 0.0  # two doubles divided, as decord's ts_factor
    else:
        factor = float(time_base)
    origin = np.asarray(start_time, np.int64).astype(np.float32)
    start = ((pts.astype(np.float32) - origin).astype(np.float64) * factor).astype(np.float32)
    end = ((ticks.astype(np.float32) - origin).astype(np.float64) * factor).astype(np.float32)
    return np.stack([start, end], axis=-1)  # [N, 2]


def frame_times(source: str | os.PathLike) -> np.ndarray:
    """A file's frame times [N, 2] float32 (start, end), one row per frame in presentation order.

    Equal to decord 0.6.0's `VideoReader(source).get_frame_timestamp(range(N))`, which the original reads
    as `_frame_pts`: every video packet of the file is read (no decoding), sorted by pts and timed by
    `decord_times` from the stream's start_time. A stream without a start_time (decord subtracts FFmpeg's
    no-value marker, -2^63, and gives every frame a time near 2^63 ticks, so the original reads no frame
    there) is timed from its first pts.
    """
    source = os.fspath(source)
    container, stream = _open(source, "file", DEFAULT_TIMEOUT_S, None)
    start_time, tb = stream.start_time, stream.time_base or Fraction(1, 1)
    try:
        packets = [(p.pts, p.duration or 0) for p in container.demux(stream) if p.pts is not None]
    except av.FFmpegError as e:
        raise VideoError(f"Reading the packets of {source!r} failed ({e}); the file is truncated or corrupt.") from e
    finally:
        container.close()
    if not packets:
        raise VideoError(f"{source!r} has no timestamped video packets; re-encode it (e.g. into mp4).")
    pts, dur = np.array(packets, np.int64).T  # [N], [N]
    order = np.argsort(pts, kind="stable")  # decord sorts its packets by pts: frame i is the i-th shown
    return decord_times(pts[order], dur[order], int(pts.min()) if start_time is None else start_time, tb)


def _check_complete(container, stream, source: str, reached: float) -> None:
    """Raise VideoError when a file's frames end well before the duration its index declares.

    With frame threading FFmpeg drops the error of a packet cut short and decoding just ends, so a file
    truncated after a front-loaded index (mp4 faststart) would look complete; its index still knows the
    full length. The stream's own duration is trusted to a frame; the container's (which may include a
    longer audio track) to a second.
    """
    if stream.duration is not None and stream.time_base:
        declared, slack = float(stream.duration * stream.time_base), 0.05 + 1.5 / float(stream.average_rate or 25)
    elif container.duration is not None:
        declared, slack = container.duration / av.time_base, 1.0
    else:
        return
    start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
    if reached < declared - start - slack:
        raise VideoError(f"{source!r} ends at {reached:.2f} s but its index declares {declared - start:.2f} s: the "
                         f"file is truncated or corrupt; re-download or re-encode it.")


def _check_timing(fps: float, start: float, end: float | None) -> None:
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        raise ValueError(f"start ({start}) and end ({end}) must be finite seconds; pass numbers like 0 and 60.")
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}.")
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds; got {start}.")
    if end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start}); pass a later end or end=None.")


def read_frames(source: str | os.PathLike, *, fps: float = 2.0, start: float = 0.0, end: float | None = None,
                timeout: float = DEFAULT_TIMEOUT_S,
                options: dict[str, str] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video and yield (grid time in seconds, RGB frame uint8 [H, W, 3]) on the grid start + k/fps.

    source: a file path, a URL (rtsp://, http(s)://, ...) or a camera `/dev/videoN` (opened as v4l2).
    Each grid time t gets the latest decoded frame whose timestamp is <= t, so it is emitted once the next
    frame has been decoded (one source frame of latency on a live source). Files count time from the
    stream start and seek to `start`; live sources count from their first frame. `end` is exclusive.
    `timeout` bounds opening and each read of a URL; `options` go to FFmpeg (e.g. a camera's video_size).
    The source is opened right away, so a bad source raises VideoError here, not on the first frame.
    """
    _check_timing(fps, start, end)
    source = os.fspath(source)
    kind = _kind(source)
    container, stream = _open(source, kind, timeout, options)
    if kind != "camera":
        stream.thread_type = "AUTO"  # frame-parallel decoding; a camera gains nothing from it
    return _read(container, stream, source, kind, fps, start, end)


def _read(container, stream, source, kind, fps, start, end) -> Iterator[tuple[float, np.ndarray]]:
    try:
        last_frame, last_rgb, n = None, None, 0
        for g, frame in _grid_sample(_timed_av_frames(container, stream, source, kind, start), fps, start, end):
            if frame is not last_frame:  # a frame repeated on the grid is converted once
                last_frame, last_rgb = frame, frame.to_ndarray(format="rgb24")
            n += 1
            yield g, last_rgb
        if n == 0:
            span = f"at or after {start} s" if end is None else f"in [{start}, {end}) s"
            raise VideoError(f"{source!r} has no video frames {span}; check the source and the start/end times.")
    finally:
        container.close()


# --------------------------------------------------------------------------------------------------
# The original's frame picking and resize: StreamingVLM reads frames with `_read_video_decord_plus`
# (streaming_vlm/livecc_utils/src/livecc_utils/video_process_patch.py, strict_fps=True) over decord 0.6.0's
# float32 frame end times, under numpy 2 (its frozen requirements pin numpy 2.2.6 / 2.3.2), and resizes
# with torchvision.

ORIGINAL_FPS = 2.0  # qwen-vl-utils' FPS: the grid step is the Python float 1 / FPS
ORIGINAL_MAX_FRAMES = 480  # FPS_MAX_FRAMES: a training clip keeps its first 240 s
ORIGINAL_TOTAL_PIXELS = 24576 * 28 * 28  # VIDEO_MAX_PIXELS of the SFT scripts: the whole-clip budget


def pick_on_grid(pts: Sequence[float], fps: float = ORIGINAL_FPS, max_frames: int | None = None) -> list[int]:
    """Indices into `pts` (frame end times [N], decord's float32, presentation order) picked on a 1/fps grid.

    The original's expressions, evaluated the way numpy 2 evaluates them on float32 times:
    `grid = arange(pts[0], pts[-1] + 1e-6, 1 / fps)`, cut to `max_frames` points, and each grid point
    takes the first frame with `pts >= grid` (a point past every frame takes frame 0: argmax of all-False);
    the list is padded to an even length with its last index. `pts[-1] + 1e-6` stays float32 (NEP 50), so
    from 32 s on, where a float32 step is 3.8e-6, the 1e-6 is lost and a frame ending exactly 1 s after
    the first is no longer on the grid. arange's length and second point come from float32 arithmetic; its
    array is float64, so `pts >= grid` compares in float64.
    """
    pts = np.asarray(pts, np.float32)  # [N]
    if pts.size == 0:
        return []
    grid = np.arange(pts[0], pts[-1] + 1e-6, 1 / float(fps))  # np.float32 bounds, a Python float step
    if max_frames is not None and len(grid) > max_frames:
        grid = grid[:max_frames]
    idx = (grid[:, None] <= pts).argmax(axis=1).tolist()  # [G]
    while len(idx) % TEMPORAL_PATCH_SIZE:
        idx.append(idx[-1])
    return idx


def pick_second(pts: Sequence[float], t: float, duration: float = 1.0, fps: float = ORIGINAL_FPS) -> list[int]:
    """Indices into `pts` (all frame end times [N], decord's float32) that the original streams for [t, t+duration].

    P = the frames with `t <= pts <= t + duration`, where t and t + duration are Python numbers that numpy
    casts to float32 for the comparison (the original's video_start and video_end); the grid pick of P
    (`pick_on_grid`); its last int(duration * fps). Frames end at about t and t + 0.5 in the usual case.
    When frames end exactly at t and t + 1 and t + 1 < 32 s, the grid has 3 points, padded to 4, and the
    frame ending at t + 1 is used twice; from 32 s on the grid has 2 points and the frames ending at t and
    t + 0.5 are taken. Empty when no frame ends in the span (the original stops there).
    """
    pts = np.asarray(pts, np.float32)  # [N]
    t = float(t)  # a numpy float64 would compare in float64; the original's bounds are Python numbers
    inside = ((t <= pts) & (pts <= t + float(duration))).nonzero()[0]
    if inside.size == 0:
        return []
    picked = pick_on_grid(pts[inside], fps)
    return [int(inside[i]) for i in picked[-int(duration * fps):]]


def clip_max_pixels(n_frames: int, *, min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                    total_pixels: int = ORIGINAL_TOTAL_PIXELS) -> float:
    """The original's per-frame pixel cap for a clip of n frames: max(min(max, total/n*2), int(min*1.05))."""
    return max(min(max_pixels, total_pixels / max(n_frames, 1) * TEMPORAL_PATCH_SIZE), int(min_pixels * 1.05))


def resize_frames_tv(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 frames [T, H, W, 3] as torchvision `resize(..., BICUBIC, antialias=True)` on uint8.

    Bit for bit what torch's CPU kernel computes, float32 values before rounding included
    (`svlm_jax.tv_resize`): the original's resize of every frame it streams and trains on.
    """
    frames = _check_frames(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    return tv_resize.resize_tv(frames, height, width)


RESIZERS = {"torchvision": resize_frames_tv, "pil": resize_frames}


def resize_with(name: str):
    """A resize function by name: "torchvision" (the original's) or "pil" (HF's slow image processor)."""
    if name not in RESIZERS:
        raise ValueError(f"Unknown resize {name!r}; use one of {sorted(RESIZERS)}.")
    return RESIZERS[name]


def read_clip(source: str | os.PathLike, start: float, end: float, *, fps: float = ORIGINAL_FPS,
              max_frames: int | None = ORIGINAL_MAX_FRAMES) -> tuple[np.ndarray, list[float]]:
    """The original's training clip [start, end] s: (frames uint8 [n, H, W, 3], their end times), n even.

    As `_read_video_decord_plus` with video_start/video_end (the record's floats): the frames whose
    float32 end time (`decord_times`) satisfies `start <= pts <= end`, compared in float32, are picked with
    `pick_on_grid` (at most `max_frames`, FPS_MAX_FRAMES). The end times are returned as Python floats
    holding the float32 values, as the original's `clip_pts`. Only picked frames are converted to RGB.
    Raises VideoError when no frame ends in the clip.
    """
    source = os.fspath(source)
    start, end = float(start), float(end)
    kind = _kind(source)
    container, stream = _open(source, kind, DEFAULT_TIMEOUT_S, None)
    try:
        stream.thread_type = "AUTO"
        pts, frames = [], []
        for s, e, frame in _decord_timed(container, stream, source, kind, max(start - 2.0, 0.0)):
            if s > end:  # presentation order: this frame and every later one end after `end`
                break
            if start <= e <= end:
                pts.append(e)
                frames.append(frame)
        if not pts:
            raise VideoError(f"{source!r} has no frames ending in [{start}, {end}] s; check video_start/video_end.")
        idx = pick_on_grid(pts, fps, max_frames)
        rgb: dict[int, np.ndarray] = {}
        for i in idx:
            if i not in rgb:
                rgb[i] = frames[i].to_ndarray(format="rgb24")
        return np.stack([rgb[i] for i in idx]), [float(pts[i]) for i in idx]
    finally:
        container.close()


# --------------------------------------------------------------------------------------------------
# Live per-second stream


@dataclasses.dataclass(frozen=True, eq=False)
class Second:
    """One second of video, ready for the vision tower.

    frames: uint8 [fps, h, w, 3] after resizing to the stream's grid; pixel_values: float32 [N, 1176];
    grid_thw: int64 [1, 3] = (ceil(fps/2), h/14, w/14). A `partial` second (the stream ended inside it)
    holds `num_real` real frames followed by copies of the last one.
    """

    index: int
    t0: float
    t1: float
    fps: int
    frames: np.ndarray  # [fps, h, w, 3] uint8
    pixel_values: np.ndarray  # [N, 1176] float32
    grid_thw: np.ndarray  # [1, 3] int64
    partial: bool = False
    num_real: int = 0

    @property
    def second_per_grid_ts(self) -> float:
        """Seconds covered by one temporal grid: temporal_patch_size / fps (HF's second_per_grid_ts)."""
        return TEMPORAL_PATCH_SIZE / self.fps


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def _check_iter_frame(i: int, frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise VideoError(f"Frame {i} from the iterator has dtype {frame.dtype} and shape {frame.shape}; yield "
                         f"uint8 RGB frames [H, W, 3].")
    return frame


def _original_sample(timed: Iterable[tuple[float, float, Any]], fps: int, start: float, end: float | None,
                     to_rgb, chunk: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """The original's per-round picking over (start, end, frame) in presentation order, float32 times.

    Round i of `chunk` seconds (t = start + i * chunk) is `pick_second(.., t, chunk)` of the frames with
    `t <= end <= t + chunk` (float32 comparisons, as the original's), padded to chunk * fps with the last.
    It is complete once a frame ends after t + chunk, which assumes end times ascend in presentation order
    (true when frames last one frame interval, or until the next frame); a live source then waits for no
    extra frame. A frame ending exactly at t + chunk belongs to rounds i and i + 1. Stops at the first
    round with no frame, as the original does. Yields (t + j/fps, RGB frame) pairs, chunk * fps per round.
    """
    buf: list[tuple[np.float32, Any]] = []  # (end time, frame) of the frames that may still be picked
    rgb: dict[int, np.ndarray] = {}
    i = 0

    n = chunk * fps

    def emit(t):
        idx = pick_second(np.array([e for e, _ in buf], np.float32), t, float(chunk), fps)
        if not idx:
            return None
        idx += [idx[-1]] * (n - len(idx))
        out = []
        for j, k in enumerate(idx):
            f = buf[k][1]
            if id(f) not in rgb:
                rgb[id(f)] = to_rgb(f)
            out.append((t + j / fps, rgb[id(f)]))
        return out

    def advance():
        nonlocal buf, i
        i += 1
        t = start + i * chunk
        buf = [(e, f) for e, f in buf if e >= t]  # np.float32 vs a Python float: compared in float32
        live = {id(f) for _, f in buf}
        for k in [k for k in rgb if k not in live]:
            del rgb[k]

    for _, e, frame in timed:
        if e < start:
            continue
        while e > start + (i + 1) * chunk:
            if end is not None and start + i * chunk >= end - _EPS:
                return
            got = emit(start + i * chunk)
            if got is None:
                return
            yield from got
            advance()
        buf.append((e, frame))
    while end is None or start + i * chunk < end - _EPS:
        got = emit(start + i * chunk)
        if got is None:
            return
        yield from got
        advance()


def _iterator_times(frames: Iterable[Any], source_fps: float) -> Iterator[tuple[np.float32, np.float32, Any]]:
    """(start, end, frame) for frame i of an iterator: decord's times of pts i, duration 1, ticks of 1/source_fps s."""
    factor = 1 / source_fps
    for i, frame in enumerate(frames):
        (s, e), = decord_times([i], [1], 0, factor)
        yield s, e, frame


def _read_original(container, stream, source, kind, fps, start, end, chunk=1) -> Iterator[tuple[float, np.ndarray]]:
    try:
        n = 0
        for item in _original_sample(_decord_timed(container, stream, source, kind, max(start - 1.0, 0.0)),
                                     fps, start, end, lambda f: f.to_ndarray(format="rgb24"), chunk):
            n += 1
            yield item
        if n == 0:
            span = f"at or after {start} s" if end is None else f"in [{start}, {end}) s"
            raise VideoError(f"{source!r} has no video frames {span}; check the source and the start/end times.")
    finally:
        container.close()


SAMPLINGS = ("original", "grid")


class FrameStream:
    """Per-second preprocessed video from a file, URL, camera, or any iterator of frames.

    Iterating yields `Second`s covering [start + k, start + k + 1). A background thread decodes, picks the
    frames of each second, resizes every frame to the grid of the stream's first frame (smart_resize within
    [min_pixels, max_pixels]; later frames of another size are resized to it too) and patchifies, feeding a
    bounded queue of `queue_size` seconds. When the consumer falls behind, the thread waits, so a live source
    is read late rather than dropped. An error in the thread is re-raised in the consumer. A stream that ends
    inside a second yields that second padded with its last frame and `partial=True` (grid sampling).

    sampling="original" (default) picks as the original StreamingVLM does (`pick_second`): the last `fps`
    grid picks of the frames whose float32 end time lies in [t, t + 1]. Usually these end at about t and
    t + 0.5; a frame ending exactly at t + 1 is used twice below 32 s and not from 32 s on (float32
    rounding, see `pick_on_grid`), and a final frame ending at a whole second yields one more second.
    Frame times are decord's (`decord_times`): from each packet's pts and duration and the stream's
    start_time for a file (bit-equal to decord on mp4, mkv, mpegts and nut files); a live URL or camera,
    which has no index, is timed the same way from its packets with its first frame as time 0; frame i of
    an iterator starts at i / source_fps and ends at (i + 1) / source_fps, in decord's float32 arithmetic.
    sampling="grid" takes the frame shown at each grid time t + j/fps (what a viewer sees then).
    resize="torchvision" (default) is the original's antialiased bicubic; "pil" is HF's slow image
    processor's.

    source: path, URL, `/dev/videoN`, or an iterable of uint8 [H, W, 3] frames at `source_fps` frames per
    second (frame i is at time i / source_fps). fps: frames per second fed to the model, an integer in [1, 8].
    chunk: seconds per yielded `Second` (the original's chunk_duration): each covers [t, t + chunk) and holds
    one clip of chunk * fps frames picked over the whole span, as the original reads a round (with
    sampling="original", `pick_second(.., t, chunk)`; not the frames of `chunk` one-second picks).
    Use as a context manager, or call `close()`, to stop the thread early. `FrameStream.for_model` takes
    fps, pixel budget, sampling and resize from a checkpoint instead of these defaults.
    """

    @classmethod
    def for_model(cls, source: str | os.PathLike | Iterable[np.ndarray], model, **overrides) -> "FrameStream":
        """A FrameStream of `source` that shows `model` frames as it was trained on them.

        model: a checkpoint directory, whose preprocessing.json gives fps, min/max pixels, frame picking
        (`sampling`) and resize (StreamingVLM's defaults where it records none), or a
        `checkpoint.Preprocessing`. overrides: any FrameStream argument; fps, min_pixels, max_pixels,
        sampling and resize given here win over the model's, and a None leaves the model's (or the
        default) in place, so unset CLI flags can be passed straight through.
        """
        from svlm_jax.checkpoint import Preprocessing, load_preprocessing

        pre = model if isinstance(model, Preprocessing) else load_preprocessing(model)
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(source, **{**pre.frame_stream_kwargs(), **given})

    def __init__(self, source: str | os.PathLike | Iterable[np.ndarray], *, fps: int = 2,
                 source_fps: float | None = None, start: float = 0.0, end: float | None = None,
                 min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS, queue_size: int = 4,
                 timeout: float = DEFAULT_TIMEOUT_S, options: dict[str, str] | None = None,
                 sampling: str = "original", resize: str = "torchvision", chunk: int = 1):
        if isinstance(fps, bool) or int(fps) != fps or not 1 <= fps <= MAX_FPS:
            raise ValueError(f"fps must be an integer from 1 to {MAX_FPS}; got {fps}.")
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk must be a whole number of seconds >= 1; got {chunk}.")
        self.chunk = int(chunk)
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}; got {sampling!r}.")
        self._resize = resize_with(resize)
        self.sampling = sampling
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1; got {queue_size}.")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels} (or is not positive); pass "
                             f"0 < min_pixels <= max_pixels.")
        self.fps = int(fps)
        self.start = float(start)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        if isinstance(source, (str, os.PathLike)) and sampling == "grid":
            # Opened here, so a bad source fails in the caller's thread straight away.
            self._sampled = read_frames(source, fps=self.fps, start=start, end=end, timeout=timeout,
                                        options=options)
        elif isinstance(source, (str, os.PathLike)):
            _check_timing(self.fps, start, end)
            src = os.fspath(source)
            kind = _kind(src)
            container, vstream = _open(src, kind, timeout, options)
            if kind != "camera":
                vstream.thread_type = "AUTO"
            self._sampled = _read_original(container, vstream, src, kind, self.fps, self.start, end, self.chunk)
        else:
            if source_fps is None or not source_fps > 0:
                raise ValueError(f"An iterator source needs its frame rate: pass source_fps > 0 (got {source_fps}).")
            _check_timing(self.fps, start, end)
            if sampling == "grid":
                timed = ((i / source_fps, 1 / source_fps, f) for i, f in enumerate(source))
                self._sampled = _grid_sample(timed, self.fps, self.start, end)
            else:
                self._sampled = _original_sample(_iterator_times(source, source_fps), self.fps, self.start, end,
                                                 lambda f: f, self.chunk)
        self.size: tuple[int, int] | None = None  # (h, w) of every frame, fixed by the first one
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="FrameStream", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- producer
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _second(self, index: int, frames: list[np.ndarray]) -> Second:
        n, full = len(frames), self.fps * self.chunk
        frames = frames + [frames[-1]] * (full - n)
        arr = np.stack(frames)  # [chunk * fps, h, w, 3]: one clip, as the original reads a round
        pixels, grid = patchify_video(arr)
        t0 = self.start + index * self.chunk
        return Second(index=index, t0=t0, t1=t0 + float(self.chunk), fps=self.fps, frames=arr, pixel_values=pixels,
                      grid_thw=grid, partial=n < full, num_real=n)

    def _run(self) -> None:
        try:
            buf: list[np.ndarray] = []
            index = 0
            for i, (_, frame) in enumerate(self._sampled):
                if self._stop.is_set():
                    return
                frame = _check_iter_frame(i, frame)
                if self.size is None:
                    try:
                        self.size = smart_resize(frame.shape[0], frame.shape[1], PATCH_SIZE * MERGE_SIZE,
                                                 self.min_pixels, self.max_pixels)
                    except ValueError as e:  # a 2x2 video, a 1000:1 strip: the source's fault
                        raise VideoError(f"Cannot use this video: {e}") from None
                buf.append(self._resize(frame[None], *self.size)[0])
                if len(buf) == self.fps * self.chunk:
                    if not self._put(self._second(index, buf)):
                        return
                    buf, index = [], index + 1
            if buf and not self._put(self._second(index, buf)):
                return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Failure(e))
        finally:
            close = getattr(self._sampled, "close", None)
            if close is not None:
                close()  # runs read_frames' cleanup (closes the container) in this thread

    # ---------------------------------------------------------------- consumer
    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> Second:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self, timeout: float = 30.0) -> None:
        """Stop the background thread and release the source; iteration then ends. Safe to call twice.

        Waits for the thread to finish its current frame (a read of a URL may take up to its timeout):
        a decoder thread still inside FFmpeg while the interpreter shuts down can crash the process.
        """
        self._done = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int | Fraction, *,
              options: dict[str, str] | None = None) -> str:
    """Encode RGB frames (each uint8 [H, W, 3], all one size, even sides) as h264 mp4; frame i at i/fps s.

    fps: an integer, or a Fraction such as Fraction(30000, 1001) for 29.97 fps. options go to libx264 (e.g.
    {"crf": "0"} for near-lossless). The file is written under a temporary name and renamed when complete.
    Returns `path` as a string.
    """
    path = str(path)
    tmp = path + ".part"
    try:
        with av.open(tmp, mode="w", format="mp4") as out:
            stream = None
            for i, img in enumerate(frames):
                img = np.ascontiguousarray(img, np.uint8)  # [H, W, 3]
                if stream is None:
                    stream = out.add_stream("libx264", rate=fps)
                    stream.height, stream.width = img.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = dict(options or {})
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is None:
                raise ValueError(f"write_mp4 got no frames for {path}; pass at least one.")
            for packet in stream.encode():
                out.mux(packet)
    except BaseException:  # leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return path
