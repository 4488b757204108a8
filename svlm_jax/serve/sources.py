"""Server-side sources: a file, URL or RTSP stream read by `video.FrameStream` and paced to real time,
and uploaded files kept in a private temporary directory until their session ends."""
from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import threading
import time
from typing import Callable

import numpy as np
from PIL import Image

from svlm_jax.serve.frames import last_sample_time, make_second
from svlm_jax.video import VIDEO_MIN_PIXELS, FrameStream, Second, resize_frames_tv


def open_source(source: str, fps: int, frame_hw: tuple[int, int], timeout: float) -> FrameStream:
    """Open a file, URL or camera with FrameStream (blocking, up to `timeout` for a URL); raises VideoError.

    Frames are picked as a live viewer sees them (sampling="grid": the frame shown at each t + j/fps), the
    way camera frames arrive, so a second is complete once its last grid time has passed.
    """
    area = frame_hw[0] * frame_hw[1]
    # Decode near the server's frame size, so the second resize to exactly frame_hw is cheap.
    return FrameStream(source, fps=fps, timeout=timeout, min_pixels=min(area, VIDEO_MIN_PIXELS), max_pixels=area,
                       queue_size=2, sampling="grid", resize="torchvision")


def preview_jpeg(frame: np.ndarray, quality: int = 70) -> bytes:
    """A uint8 [h, w, 3] frame as JPEG bytes, for the page to show what a server-side source sees."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SourcePump:
    """A thread that reads `frames` (a FrameStream), resizes each second to frame_hw and hands it to
    `deliver` no earlier than the moment its last frame is shown in real time (origin + t0 + (fps-1)/fps,
    as a camera's would arrive), so a file plays at its own speed and a live stream is never read ahead. `on_end(None)` when the source ends, `on_end(exc)` when
    it fails. `origin` is the monotonic time of second 0 of the source.
    """

    def __init__(self, frames: FrameStream, frame_hw: tuple[int, int], deliver: Callable[[Second], None],
                 on_end: Callable[[BaseException | None], None], *, preview: Callable[[bytes], None] | None = None,
                 clock=time.monotonic):
        self.frames, self.frame_hw, self.deliver, self.on_end = frames, frame_hw, deliver, on_end
        self.preview, self.clock = preview, clock
        self.origin = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="svlm-source", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self.origin = self.clock()
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and release the source (returns at once; the thread ends within a frame)."""
        self._stop.set()
        threading.Thread(target=self.frames.close, daemon=True).start()

    def _run(self) -> None:
        err: BaseException | None = None
        try:
            for sec in self.frames:
                frames = resize_frames_tv(sec.frames, *self.frame_hw)  # [fps, h, w, 3]
                second = make_second(sec.index, list(frames), sec.fps, partial=sec.partial,
                                     num_real=sec.num_real)
                wait = self.origin + (last_sample_time(sec) - self.frames.start) - self.clock()
                if wait > 0 and self._stop.wait(wait):
                    return
                if self._stop.is_set():
                    return
                self.deliver(second)
                if self.preview is not None:
                    self.preview(preview_jpeg(frames[-1]))
        except BaseException as e:  # noqa: BLE001 - reported to the session
            err = e
        if not self._stop.is_set():
            self.on_end(err)


class Uploads:
    """Uploaded videos under a private temporary directory, by random id; `cleanup` deletes them all."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.root = tempfile.mkdtemp(prefix="svlm-uploads-")
        self._lock = threading.Lock()

    def new(self) -> tuple[str, str]:
        """A fresh (id, temporary path) to write an upload to; `commit` makes it visible."""
        uid = secrets.token_hex(8)
        return uid, os.path.join(self.root, uid + ".part")

    def commit(self, uid: str) -> None:
        """Publish a completely written upload under its id."""
        os.replace(os.path.join(self.root, uid + ".part"), os.path.join(self.root, uid))

    def path(self, uid: str) -> str | None:
        """The file of upload `uid`, or None if there is none (ids are hex, so no path tricks)."""
        if not uid or any(ch not in "0123456789abcdef" for ch in uid):
            return None
        p = os.path.join(self.root, uid)
        return p if os.path.isfile(p) else None

    def remove(self, uid: str) -> None:
        """Delete one upload (after its session ended)."""
        p = self.path(uid)
        if p:
            os.remove(p)

    def cleanup(self) -> None:
        """Delete every upload."""
        shutil.rmtree(self.root, ignore_errors=True)
