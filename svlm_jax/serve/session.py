"""One viewer's session (its slot, transcript, counters and outgoing messages) and the session registry."""
from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from typing import Any

from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.metrics import Metrics
from svlm_jax.serve.protocol import ProtocolError

CLOSE = "close"  # outbox item ("close", ws_code): the writer closes the socket after what came before


class Session:
    """A session: where its video comes from, which slot it holds, what was said, what to send next.

    Outgoing messages go through `send`, which any thread may call; the app's writer task drains `outbox`.
    `pending`, `pending_at` and `last_offer` belong to the engine and are read and written under its lock.
    `origin` is the monotonic wall time of video second 0, so the last frame of a second [t0, t1) was live
    at origin + t0 + (fps - 1) / fps, and its lag is the time from then until its commentary is sent.
    """

    _ids = itertools.count(1)

    def __init__(self, client: str, source: dict[str, str], query: str | None, loop: asyncio.AbstractEventLoop,
                 outbox_max: int):
        self.id = secrets.token_hex(16)  # 128 bits: knowing the token, one still cannot guess a transcript
        self.stream_id = next(Session._ids)  # seeds the session's sampler
        self.client, self.source, self.query = client, dict(source), query
        self.slot: int | None = None
        self.origin: float | None = None
        self.ready_at = 0.0  # monotonic time of "ready": a camera frame's time stamp is checked against it
        self.entries: list[dict[str, Any]] = []
        self.seconds = self.skipped = self.questions = 0
        self.error: dict[str, Any] | None = None
        self.pending = None
        self.pending_at = self.last_offer = None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self._loop, self._outbox_max, self._closing = loop, outbox_max, False

    def send(self, msg: dict[str, Any] | bytes) -> None:
        """Queue a JSON message (dict) or a binary preview (bytes) for the client; safe from any thread."""
        self._loop.call_soon_threadsafe(self._put, msg)

    def close_socket(self, code: int = 1000) -> None:
        """Ask the writer to close the WebSocket after the messages already queued; safe from any thread."""
        self._loop.call_soon_threadsafe(self._put, (CLOSE, code))

    def record(self, entry: dict[str, Any]) -> None:
        """Add a commentary or answer to the transcript and send it."""
        self.entries.append(entry)
        self.send(entry)

    def _put(self, item) -> None:
        if self._closing:
            return
        if isinstance(item, tuple):
            self._closing = True
        elif self.outbox.qsize() >= self._outbox_max:
            # The client does not read: stop rather than buffer without bound.
            err = ProtocolError("slow_client", f"More than {self._outbox_max} messages are waiting for this "
                                               f"client; the session is closed.")
            self.error = err.to_json()
            self.outbox.put_nowait(self.error)
            self.outbox.put_nowait((CLOSE, err.close_code))
            self._closing = True
            return
        self.outbox.put_nowait(item)

    def summary(self) -> dict[str, Any]:
        """The session's counters, as sent in the final "end" message."""
        return {"session": self.id, "seconds": self.seconds, "skipped": self.skipped, "questions": self.questions}


class Registry:
    """Live sessions (at most `max_sessions`, at most `sessions_per_client` per remote address) and the
    transcripts of the last `keep_transcripts` finished ones. Used from the event loop only."""

    def __init__(self, cfg: ServerConfig, metrics: Metrics):
        self.cfg, self.metrics = cfg, metrics
        self.live: dict[str, Session] = {}
        self.finished: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def admit(self, session: Session) -> None:
        """Register a new session or raise ProtocolError("full" / "client_limit") saying why not."""
        if len(self.live) >= self.cfg.max_sessions:
            self.metrics.refused.labels("full").inc()
            raise ProtocolError("full", f"The server is full: all {self.cfg.max_sessions} session slots are in "
                                        f"use.")
        mine = sum(s.client == session.client for s in self.live.values())
        if mine >= self.cfg.sessions_per_client:
            self.metrics.refused.labels("client_limit").inc()
            raise ProtocolError("client_limit", f"This client already has {mine} sessions, the most allowed "
                                                f"per client.")
        self.live[session.id] = session
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.live))

    def finish(self, session: Session) -> None:
        """Move a session to the finished ones, keeping its transcript downloadable."""
        if self.live.pop(session.id, None) is None:
            return
        self.finished[session.id] = session
        while len(self.finished) > self.cfg.keep_transcripts:
            self.finished.popitem(last=False)
        self.metrics.sessions.set(len(self.live))

    def get(self, sid: str) -> Session | None:
        """A live or finished session by id."""
        return self.live.get(sid) or self.finished.get(sid)
