"""Frames in, `video.Second`s out: JPEG decoding and per-second assembly of timestamped frames.

Every frame is resized to the server's fixed frame size with the checkpoint's resize (by default the original's,
torchvision's antialiased bicubic, `video.resize_frames_tv`), so every session's seconds have one vision grid and
the compiled step never sees a new shape.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from svlm_jax.serve.protocol import ProtocolError
from svlm_jax.video import Second, patchify_video, resize_with

MAX_SOURCE_PIXELS = 4096 * 4096  # a larger "JPEG" is refused before it is decoded (decompression bombs)
_EPS = 1e-6


def decode_jpeg(data: bytes, frame_hw: tuple[int, int], resize: str = "torchvision") -> np.ndarray:
    """JPEG bytes -> uint8 RGB [h, w, 3] at frame_hw = (h, w), resized with `resize` (`video.RESIZERS`, the
    checkpoint's); anything undecodable raises ProtocolError."""
    h, w = frame_hw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["JPEG"])
            if img.width * img.height > MAX_SOURCE_PIXELS:
                raise ProtocolError("bad_frame", f"A JPEG of {img.width}x{img.height} pixels exceeds "
                                                 f"{MAX_SOURCE_PIXELS} pixels; send a smaller frame.")
            img.draft("RGB", (w, h))  # let the JPEG decoder downscale by 2/4/8 when the frame is large
            rgb = np.asarray(img.convert("RGB"))  # [H, W, 3]
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ProtocolError("bad_frame", f"A frame is not a decodable JPEG ({type(e).__name__}).") from None
    return resize_with(resize)(rgb[None], h, w)[0]  # as in training


def make_second(index: int, frames: list[np.ndarray], fps: int, *, partial: bool = False,
                num_real: int | None = None) -> Second:
    """fps uint8 frames [h, w, 3] of second `index` -> a `Second` covering [index, index + 1)."""
    arr = np.stack(frames)  # [fps, h, w, 3]
    pixels, grid = patchify_video(arr)
    return Second(index=index, t0=float(index), t1=float(index + 1), fps=fps, frames=arr, pixel_values=pixels,
                  grid_thw=grid, partial=partial, num_real=len(frames) if num_real is None else num_real)


def last_sample_time(second: Second) -> float:
    """Video time of a second's last grid sample, t0 + (fps - 1) / fps: from then on the second is known,
    so a live viewer's lag is measured from it."""
    return second.t0 + (second.fps - 1) / second.fps


class SecondAssembler:
    """Timestamped frames -> complete seconds, sampled on the 1/fps grid of each second.

    A frame at t goes to second floor(t), grid bucket floor((t - floor(t)) * fps); a later frame in the
    same bucket replaces it. A second is complete when its last bucket has a frame or a frame of a later
    second arrives; empty buckets repeat the nearest earlier frame (the first frame for leading ones).
    Frames of a second already handed out are dropped. Timestamps must not decrease.
    """

    def __init__(self, fps: int):
        self.fps = fps
        self.index: int | None = None  # the second being filled
        self.buckets: list[np.ndarray | None] = [None] * fps
        self.done = -1  # the last second handed out
        self.last_t = -math.inf

    def add(self, t: float, frame: np.ndarray) -> list[Second]:
        """Add one frame [h, w, 3] at t seconds; returns the seconds it completed (zero, one or two)."""
        if t < self.last_t - _EPS:
            raise ProtocolError("bad_frame", f"Frame timestamps must not decrease: {t:.3f} s came after "
                                             f"{self.last_t:.3f} s.")
        self.last_t = t
        i = int(math.floor(t + _EPS))
        out = []
        if i <= self.done:
            return out
        if self.index is not None and i != self.index:
            out.append(self._finish())
        if self.index is None:
            self.index, self.buckets = i, [None] * self.fps
        k = min(self.fps - 1, int(math.floor((t - i) * self.fps + _EPS)))
        self.buckets[k] = frame
        if k == self.fps - 1:
            out.append(self._finish())
        return out

    def flush(self) -> Second | None:
        """The second being filled, padded and marked partial if it lacks frames; None if there is none."""
        if self.index is None:
            return None
        return self._finish(partial=any(b is None for b in self.buckets))

    def _finish(self, partial: bool = False) -> Second:
        real = [b for b in self.buckets if b is not None]
        frames, prev = [], real[0]
        for b in self.buckets:
            prev = b if b is not None else prev
            frames.append(prev)
        sec = make_second(self.index, frames, self.fps, partial=partial, num_real=len(real))
        self.done, self.index = self.index, None
        return sec
