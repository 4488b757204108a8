"""A small synchronous Python client of the WebSocket protocol (tests, benchmarks, scripts)."""
from __future__ import annotations

import io
import json
import urllib.request
from typing import Any, Iterator

import numpy as np
from PIL import Image
from websockets.sync.client import connect as connect_ws

from svlm_jax.serve.protocol import dumps, pack_frame


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB [h, w, 3] -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Client:
    """One session over one WebSocket: `start`, then `frame`/`ask`/`stop`, reading with `recv`/`until`.

    ws_url: ws://host:port/ws. Messages that `until` passes over are kept in `messages`. connect: more
    arguments for `websockets.sync.client.connect` (origin, additional_headers, source_address, ...).
    """

    def __init__(self, ws_url: str, token: str, *, max_size: int | None = 2 ** 24, open_timeout: float = 30,
                 **connect):
        self._conn = connect_ws(ws_url, max_size=max_size, open_timeout=open_timeout, **connect)
        self.ws = self._conn.__enter__()  # websockets wants its context manager entered
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.previews = 0
        self.ready: dict[str, Any] | None = None

    def start(self, source: dict[str, str] | None = None, query: str | None = None, *,
              wait: bool = True) -> dict[str, Any] | None:
        """Send the start message (default source: camera); with wait, return "ready" (or raise on error)."""
        msg = {"type": "start", "token": self.token, "source": source or {"kind": "camera"}}
        if query is not None:
            msg["query"] = query
        self.ws.send(dumps(msg))
        if wait:
            self.ready = self.until("ready")
        return self.ready

    def frame(self, t: float, jpeg: bytes) -> None:
        """Send one JPEG frame at t seconds."""
        self.ws.send(pack_frame(t, jpeg))

    def send_raw(self, data: bytes | str) -> None:
        """Send any message as is (for testing the server's checks)."""
        self.ws.send(data)

    def ask(self, text: str) -> None:
        """Ask a question about the next second."""
        self.ws.send(dumps({"type": "ask", "text": text}))

    def stop(self) -> None:
        """End the session after its last second."""
        self.ws.send(dumps({"type": "stop"}))

    def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON message (binary previews are counted and skipped)."""
        while True:
            m = self.ws.recv(timeout=timeout)
            if isinstance(m, bytes):
                self.previews += 1
                continue
            msg = json.loads(m)
            self.messages.append(msg)
            return msg

    def until(self, kind: str, timeout: float = 60.0, **match) -> dict[str, Any]:
        """Read until a message of type `kind` (with the given field values) arrives; an error raises."""
        while True:
            m = self.recv(timeout)
            if m["type"] == kind and all(m.get(k) == v for k, v in match.items()):
                return m
            if m["type"] == "error":
                raise SessionError(m)

    def close(self) -> None:
        """Close the socket."""
        self._conn.__exit__(None, None, None)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SessionError(RuntimeError):
    """The server closed the session with an error message (kept in `.message`)."""

    def __init__(self, message: dict[str, Any]):
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message


def get(url: str, token: str | None = None, *, data: bytes | None = None) -> tuple[int, bytes]:
    """GET url, or POST `data` to it (with the token as a bearer header) -> (status, body)."""
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample `name` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def iter_messages(client: Client, timeout: float) -> Iterator[dict[str, Any]]:
    """Messages until the socket closes or `timeout` passes without one."""
    try:
        while True:
            yield client.recv(timeout)
    except Exception:  # noqa: BLE001 - closed or quiet: the iteration ends
        return
