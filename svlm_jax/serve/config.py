"""`ServerConfig`: the limits and capacities of a commentary server, frozen and validated in one place;
`frame_settings`: the frames a checkpoint was trained on, as a server's fps, frame size, resize and picking."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from svlm_jax.video import MAX_FPS, MERGE_SIZE, PATCH_SIZE, RESIZERS, SAMPLINGS, TEMPORAL_PATCH_SIZE, smart_resize

MIN_TOKEN_CHARS = 16  # a --token shorter than this is refused; generated tokens are 24 characters (144 bits)
CAMERA_HW = (480, 640)  # the frame a camera session's page sends at most (VGA, 4:3): sets the served frame size


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything a server enforces, with defaults sized for one 7B model on one GPU.

    token: the shared secret every client presents (at least 16 characters). max_sessions: slots of the
    batched step (B). fps: frames per second fed to the model; frame_hw: every frame is resized to this
    (height, width) in pixels (multiples of 28), so every session has the same vision grid and nothing
    recompiles; resize: how ("torchvision" or "pil", `video.RESIZERS`); sampling: which frames of a
    server-side source make each second (`video.FrameStream`'s). `frame_settings` gives the four for a checkpoint.
    batch_wait_s: how long a step waits, once one session has a second ready, for the others' seconds.

    Session limits: max_frame_bytes (one JPEG), max_message_bytes (one text message), max_client_fps (frames a
    session may send per wall second, as a token bucket with one second of burst), max_question_chars,
    clock_ahead_s (how far a camera frame's time stamp may run ahead of the session's wall clock),
    sessions_per_client (per remote address), keep_transcripts (finished sessions whose transcript stays
    downloadable), outbox (server messages buffered for a client that does not read).

    Sources: source_roots (directories whose files sessions may stream; none: no server-side files),
    allow_urls (URL prefixes sessions may stream; none: no URLs), source_timeout_s.
    Uploads: max_upload_bytes (one file), uploads_per_client / upload_client_bytes (what one address may hold
    on disk), max_uploads / upload_total_bytes (what all may), upload_ttl_s (an upload no session claims
    within this is deleted).

    Connections, before any token is seen: handshake_timeout_s (to send a request's headers),
    start_timeout_s (a WebSocket's first message), connections_per_client (open TCP connections per address),
    max_connections (all of them; None: as many as the file-descriptor limit allows, `guard.connection_cap`),
    auth_failures_per_min (failed tokens per address, with a burst of as many). allowed_origins: browser
    origins besides the page's own whose pages may open a session. trusted_proxies: addresses whose
    X-Forwarded-For names the client (none: the socket's peer is the client).
    """

    token: str
    max_sessions: int = 4
    fps: int = 2
    frame_hw: tuple[int, int] = (336, 448)
    resize: str = "torchvision"
    sampling: str = "original"
    batch_wait_s: float = 0.5
    max_frame_bytes: int = 2 << 20
    max_message_bytes: int = 16 << 10
    max_client_fps: float = 16.0
    max_question_chars: int = 200
    clock_ahead_s: float = 60.0
    sessions_per_client: int = 2
    keep_transcripts: int = 64
    outbox: int = 256
    source_roots: tuple[str, ...] = ()
    allow_urls: tuple[str, ...] = ()
    source_timeout_s: float = 10.0
    max_upload_bytes: int = 512 << 20
    uploads_per_client: int = 2
    upload_client_bytes: int = 1 << 30
    max_uploads: int = 16
    upload_total_bytes: int = 4 << 30
    upload_ttl_s: float = 300.0
    handshake_timeout_s: float = 5.0
    start_timeout_s: float = 10.0
    connections_per_client: int = 16
    max_connections: int | None = None
    auth_failures_per_min: float = 10.0
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.token, str) or len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"The server token must be at least {MIN_TOKEN_CHARS} characters; pass a longer --token "
                             f"or omit it to have one generated.")
        if isinstance(self.fps, bool) or int(self.fps) != self.fps or not 1 <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be an integer from 1 to {MAX_FPS}; got {self.fps}.")
        unit = PATCH_SIZE * MERGE_SIZE
        h, w = self.frame_hw
        if h < unit or w < unit or h % unit or w % unit:
            raise ValueError(f"frame size {h}x{w} must have both sides positive multiples of {unit} pixels "
                             f"(e.g. 336x448).")
        if self.resize not in RESIZERS or self.sampling not in SAMPLINGS:
            raise ValueError(f"resize must be one of {sorted(RESIZERS)} and sampling one of {SAMPLINGS}; got "
                             f"{self.resize!r} and {self.sampling!r}.")
        for name in ("max_sessions", "sessions_per_client", "max_frame_bytes", "max_message_bytes",
                     "max_question_chars", "max_upload_bytes", "uploads_per_client", "upload_client_bytes",
                     "max_uploads", "upload_total_bytes", "outbox", "connections_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 (or None for the file-descriptor limit); got "
                             f"{self.max_connections}.")
        if self.max_client_fps < self.fps:
            raise ValueError(f"max_client_fps ({self.max_client_fps}) must be at least fps ({self.fps}), or no "
                             f"client could send a full second.")
        for name in ("batch_wait_s",):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}.")
        for name in ("clock_ahead_s", "source_timeout_s", "upload_ttl_s", "handshake_timeout_s", "start_timeout_s",
                     "auth_failures_per_min"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds (or tries); got {v!r}.")

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

    @property
    def server_sources(self) -> bool:
        """Whether sessions may name a server-side file or URL at all (uploads are always allowed)."""
        return bool(self.source_roots or self.allow_urls)


def frame_settings(pre) -> dict[str, Any]:
    """A checkpoint's `checkpoint.Preprocessing` -> ServerConfig's fps, frame_hw, resize and sampling.

    The frame is what training's resize makes of a 480x640 camera frame under the checkpoint's pixel budget
    (`video.smart_resize(480, 640, min_pixels, max_pixels)`: 476x644 for the defaults, 56x56 for a demo model
    trained at 56*56 pixels). When rounding to multiples of 28 leaves the budget (a budget too small for a
    4:3 frame), the frame within the budget whose aspect is nearest 4:3 is taken instead.
    """
    unit = PATCH_SIZE * MERGE_SIZE
    h, w = smart_resize(*CAMERA_HW, unit, pre.min_pixels, pre.max_pixels)
    if not pre.min_pixels <= h * w <= pre.max_pixels:
        want = math.log(CAMERA_HW[1] / CAMERA_HW[0])
        side = max(1, math.isqrt(pre.max_pixels) // unit * 4)
        fits = [(abs(math.log(b / a) - want), -a * b, a * unit, b * unit)
                for a in range(1, side + 1) for b in range(1, side + 1)
                if pre.min_pixels <= a * b * unit * unit <= pre.max_pixels]
        if fits:
            _, _, h, w = min(fits)
    return {"fps": int(pre.fps), "frame_hw": (int(h), int(w)), "resize": pre.resize, "sampling": pre.frames}
