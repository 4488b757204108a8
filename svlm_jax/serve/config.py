"""`ServerConfig`: the limits and capacities of a commentary server, frozen and validated in one place."""
from __future__ import annotations

import dataclasses

from svlm_jax.video import MAX_FPS, MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything a server enforces, with defaults sized for one 7B model on one GPU.

    token: the shared secret every client presents. max_sessions: slots of the batched step (B).
    fps: frames per second fed to the model; frame_hw: every frame is resized to this (height, width) in
    pixels (multiples of 28), so every session has the same vision grid and nothing recompiles.
    batch_wait_s: how long a step waits, once one session has a second ready, for the others' seconds.
    Limits: max_frame_bytes (one JPEG), max_message_bytes (one text message), max_client_fps (frames a
    session may send per wall second, as a token bucket with one second of burst), max_question_chars,
    sessions_per_client (per remote address), max_upload_bytes, keep_transcripts (finished sessions whose
    transcript stays downloadable), outbox (server messages buffered for a client that does not read).
    allow_server_sources: whether sessions may name a server-side file or URL (uploads are always allowed).
    """

    token: str
    max_sessions: int = 4
    fps: int = 2
    frame_hw: tuple[int, int] = (336, 448)
    batch_wait_s: float = 0.5
    max_frame_bytes: int = 2 << 20
    max_message_bytes: int = 16 << 10
    max_client_fps: float = 16.0
    max_question_chars: int = 200
    sessions_per_client: int = 2
    max_upload_bytes: int = 512 << 20
    keep_transcripts: int = 64
    outbox: int = 256
    allow_server_sources: bool = True
    source_timeout_s: float = 10.0

    def __post_init__(self):
        if not self.token or len(self.token) < 8:
            raise ValueError("The server token must be at least 8 characters; pass a longer --token or omit it "
                             "to have one generated.")
        if isinstance(self.fps, bool) or int(self.fps) != self.fps or not 1 <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be an integer from 1 to {MAX_FPS}; got {self.fps}.")
        unit = PATCH_SIZE * MERGE_SIZE
        h, w = self.frame_hw
        if h < unit or w < unit or h % unit or w % unit:
            raise ValueError(f"frame size {h}x{w} must have both sides positive multiples of {unit} pixels "
                             f"(e.g. 336x448).")
        for name in ("max_sessions", "sessions_per_client", "max_frame_bytes", "max_message_bytes",
                     "max_question_chars", "max_upload_bytes", "outbox"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if self.max_client_fps < self.fps:
            raise ValueError(f"max_client_fps ({self.max_client_fps}) must be at least fps ({self.fps}), or no "
                             f"client could send a full second.")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0; got {self.batch_wait_s}.")

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """The patch grid (t, h, w) of every second: ceil(fps / 2) temporal patches of the fixed frame."""
        h, w = self.frame_hw
        return -(-self.fps // TEMPORAL_PATCH_SIZE), h // PATCH_SIZE, w // PATCH_SIZE

    @property
    def vision_tokens(self) -> int:
        """Merged vision tokens of one second: t*h*w / merge^2 (the Streamer's `vision_tokens`)."""
        t, h, w = self.grid_thw
        return t * h * w // (MERGE_SIZE * MERGE_SIZE)
