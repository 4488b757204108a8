"""The WebSocket protocol: client messages parsed and checked, server messages built, one error table.

Client to server (docs/SERVING.md has examples):
  text   {"type": "start", "token": str, "source": {...}, "query"?: str}   first message, exactly once
         source: {"kind": "camera"} | {"kind": "url", "url": str} | {"kind": "upload", "id": str}
  text   {"type": "ask", "text": str}                                      a question for the next second
                                                                            (one that does not fit: "rejected")
  text   {"type": "stop"}                                                  finish the open second and end
  binary 8-byte little-endian float64 t (seconds of the session's video) + one JPEG frame (camera
         sessions only); t is finite, >= 0, increasing, and at most `clock_ahead_s` ahead of the wall
         time since the session became ready
Server to client: JSON text messages whose "type" is ready, comment, answer, skipped, rejected, end or error;
and, for server-side sources, binary JPEG previews of the second just read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Any

FRAME_HEADER = struct.Struct("<d")  # t: float64 seconds since the session's first frame
SOURCE_KINDS = ("camera", "url", "upload")

# code -> (WebSocket close code, what the client should do). 4000-4999 are application close codes.
ERRORS: dict[str, tuple[int, str]] = {
    "auth": (4401, "pass the token the server printed at start"),
    "throttled": (4429, "wait a minute: this address sent too many wrong tokens"),
    "full": (4429, "try again when a session ends"),
    "client_limit": (4429, "end one of your sessions first"),
    "protocol": (4400, "see docs/SERVING.md for the message formats"),
    "frame_too_large": (4413, "send smaller JPEG frames"),
    "message_too_large": (4413, "send shorter messages"),
    "bad_frame": (4400, "send a timestamped JPEG frame"),
    "rate": (4408, "send fewer frames per second"),
    "question": (4400, "send a shorter query (a question that does not fit is only rejected)"),
    "source": (4404, "stream your camera or upload the file, or ask the operator which sources are allowed"),
    "slow_client": (4408, "read the server's messages as they come"),
    "internal": (1011, "report this to the server's operator"),
}


class ProtocolError(Exception):
    """A client did something the protocol forbids; `code` is a key of ERRORS, the message one sentence."""

    def __init__(self, code: str, message: str):
        if code not in ERRORS:
            raise KeyError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code

    @property
    def close_code(self) -> int:
        """The WebSocket close code that goes with this error."""
        return ERRORS[self.code][0]

    def to_json(self) -> dict[str, Any]:
        """The one JSON error message sent before the session is closed."""
        return {"type": "error", "code": self.code, "message": str(self), "hint": ERRORS[self.code][1]}


@dataclasses.dataclass(frozen=True)
class Start:
    """The first message: the token, where the video comes from, and an optional first-second query."""

    token: str
    source: dict[str, str]
    query: str | None


@dataclasses.dataclass(frozen=True)
class Ask:
    """A viewer's question."""

    text: str


@dataclasses.dataclass(frozen=True)
class Stop:
    """The viewer ends the session."""


def parse_text(raw: str, *, max_bytes: int, max_question_chars: int) -> Start | Ask | Stop:
    """Parse one client text message -> Start, Ask or Stop; anything else raises ProtocolError."""
    if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError("message_too_large", f"A text message of {len(raw)} characters exceeds the limit of "
                                                 f"{max_bytes} bytes.")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ProtocolError("protocol", "A text message is not valid JSON.") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("protocol", "A text message must be a JSON object with a string \"type\".")
    kind = msg["type"]
    if kind == "start":
        token, source, query = msg.get("token"), msg.get("source"), msg.get("query")
        if not isinstance(token, str):
            raise ProtocolError("auth", "The start message has no token.")
        if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
            raise ProtocolError("protocol", f"The start message needs \"source\": {{\"kind\": one of "
                                            f"{', '.join(SOURCE_KINDS)}}}.")
        need = {"camera": None, "url": "url", "upload": "id"}[source["kind"]]
        if need and not (isinstance(source.get(need), str) and source[need]):
            raise ProtocolError("protocol", f"A {source['kind']} source needs a non-empty string \"{need}\".")
        if query is not None and (not isinstance(query, str) or len(query) > max_question_chars):
            raise ProtocolError("question", f"The query must be a string of at most {max_question_chars} "
                                            f"characters.")
        return Start(token=token, source={k: v for k, v in source.items() if isinstance(v, str)},
                     query=query)
    if kind == "ask":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("protocol", "An ask message needs a string \"text\".")
        return Ask(text=text.strip())  # an empty or too long one is rejected by the session, which goes on
    if kind == "stop":
        return Stop()
    raise ProtocolError("protocol", f"Unknown message type {kind!r}; use start, ask or stop.")


def parse_frame(data: bytes, *, max_bytes: int, after: float = -math.inf, latest: float = math.inf
                ) -> tuple[float, bytes]:
    """Split a binary frame message -> (t seconds, JPEG bytes); a bad size or time raises ProtocolError.

    t must be finite, >= 0, above `after` (the session's previous frame) and at most `latest` (the session's
    wall clock plus its allowance), so a client cannot stamp a second the model cannot place.
    """
    if len(data) > max_bytes + FRAME_HEADER.size:
        raise ProtocolError("frame_too_large", f"A frame of {len(data) - FRAME_HEADER.size} bytes exceeds the "
                                               f"limit of {max_bytes} bytes.")
    if len(data) <= FRAME_HEADER.size:
        raise ProtocolError("bad_frame", f"A binary message of {len(data)} bytes is too short to hold a "
                                         f"timestamp and a JPEG.")
    (t,) = FRAME_HEADER.unpack_from(data)
    if not math.isfinite(t) or t < 0:
        raise ProtocolError("bad_frame", f"A frame's timestamp {t!r} is not a finite number of seconds >= 0.")
    if t <= after:
        raise ProtocolError("bad_frame", f"Frame timestamps must increase: {t:.3f} s came after {after:.3f} s.")
    if t > latest:
        raise ProtocolError("bad_frame", f"A frame stamped {t:.3f} s is ahead of the session's clock (at most "
                                         f"{latest:.3f} s now); stamp frames with the time since the session "
                                         f"started.")
    return t, data[FRAME_HEADER.size:]


def pack_frame(t: float, jpeg: bytes) -> bytes:
    """The binary message of one frame at t seconds (what the page sends)."""
    return FRAME_HEADER.pack(t) + jpeg


def dumps(msg: dict[str, Any]) -> str:
    """A server message as compact JSON text."""
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))
