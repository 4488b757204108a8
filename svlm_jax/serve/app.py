"""The Starlette application: the page, /health, /metrics, uploads, transcripts and one WebSocket per session.

Nothing here blocks the event loop: JPEG decoding and opening a source run in worker threads, the model
step in the engine's thread, and server-side sources in their own threads.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.engine import Engine
from svlm_jax.serve.frames import SecondAssembler, decode_jpeg, make_second
from svlm_jax.serve.limits import TokenBucket
from svlm_jax.serve.metrics import Metrics
from svlm_jax.serve.protocol import Ask, ProtocolError, Start, Stop, dumps, parse_frame, parse_text
from svlm_jax.serve.session import CLOSE, Registry, Session
from svlm_jax.serve.sources import SourcePump, Uploads, open_source
from svlm_jax.serve.transcript import FORMATS

log = logging.getLogger("svlm_jax.serve")
STATIC = os.path.join(os.path.dirname(__file__), "static")
START_TIMEOUT_S = 30.0  # a socket that sends no start message within this is closed


def ws_max_size(cfg: ServerConfig) -> int:
    """The transport's cap on one WebSocket message: room for a frame twice the limit, so a frame somewhat
    over the limit still gets the protocol's JSON error; far larger ones are cut off by the transport."""
    return 2 * max(cfg.max_frame_bytes, cfg.max_message_bytes) + 1024


class Server:
    """The state of one running server: config, engine, sessions, uploads and metrics."""

    def __init__(self, cfg: ServerConfig, streamer, info: dict[str, Any] | None = None, *, warmup: bool = True,
                 on_ready=None):
        self.cfg, self.info, self.warmup, self.on_ready = cfg, dict(info or {}), warmup, on_ready
        self.metrics = Metrics(cfg.max_sessions)
        self.engine = Engine(streamer, self.metrics, batch_wait_s=cfg.batch_wait_s)
        self.registry = Registry(cfg, self.metrics)
        self.uploads = Uploads(cfg.max_upload_bytes)

    # ------------------------------------------------------------------ http
    def authorized(self, request: Request) -> bool:
        """Whether a request carries the token (Authorization: Bearer, or ?token=)."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        return secrets.compare_digest(token.encode(), self.cfg.token.encode())

    async def index(self, request: Request) -> Response:
        """GET /: the page."""
        return FileResponse(os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        """GET /health: status, session counts, steps, frame settings and the `info` fields."""
        return JSONResponse({"status": "ok", "sessions": len(self.registry.live), "max_sessions": self.cfg.max_sessions,
                             "steps": self.engine.steps, "fps": self.cfg.fps, "frame": list(self.cfg.frame_hw),
                             **self.info})

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: the Prometheus text exposition."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def transcript(self, request: Request) -> Response:
        """GET /api/sessions/{sid}/transcript.{vtt,jsonl} (token): a live or recently finished transcript."""
        if not self.authorized(request):
            return _http_error(401, "auth", "Pass the server's token as 'Authorization: Bearer TOKEN'.")
        fmt = request.path_params["fmt"]
        s = self.registry.get(request.path_params["sid"])
        if fmt not in FORMATS or s is None:
            return _http_error(404, "not_found", "No such session transcript; sessions and formats (vtt, jsonl) "
                                                 "are listed in docs/SERVING.md.")
        media, render = FORMATS[fmt]
        return Response(render(list(s.entries)), media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="session-{s.id}.{fmt}"'})

    async def upload(self, request: Request) -> Response:
        """POST /api/upload (token): store the raw body as a video for an "upload" session -> {"id", "bytes"}."""
        if not self.authorized(request):
            return _http_error(401, "auth", "Pass the server's token as 'Authorization: Bearer TOKEN'.")
        limit = self.cfg.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _http_error(413, "too_large", f"An upload of {declared} bytes exceeds the limit of {limit} bytes.")
        uid, tmp = self.uploads.new()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ValueError
                    f.write(chunk)
        except ValueError:
            os.remove(tmp)
            return _http_error(413, "too_large", f"The upload exceeds the limit of {limit} bytes.")
        if size == 0:
            os.remove(tmp)
            return _http_error(400, "empty", "The upload is empty; send the video file as the request body.")
        self.uploads.commit(uid)
        return JSONResponse({"id": uid, "bytes": size})

    # ------------------------------------------------------------------ websocket
    def fail(self, session: Session, err: ProtocolError) -> None:
        """Close one session with one JSON error; its slot is freed and its transcript kept. Any thread."""
        if session.error is not None:
            return
        session.error = err.to_json()
        self.metrics.errors.labels(err.code).inc()
        self.engine.close(session, drain=False)
        session.send(session.error)
        session.close_socket(err.close_code)

    async def websocket(self, ws: WebSocket) -> None:
        """/ws: one session from its start message to its end, error or disconnect; always frees its slot."""
        await ws.accept()
        session: Session | None = None
        pump: SourcePump | None = None
        writer = None
        try:
            start = await self._start_message(ws)
            session, frames = await self._admit(ws, start)
            writer = asyncio.create_task(_write(ws, session))
            pump = await self._connect(session, frames)
            reader = asyncio.create_task(self._read(ws, session))
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():  # the server closed the socket (end of session or an error)
                reader.cancel()
            elif reader.exception() is not None:
                raise reader.exception()
            else:  # the client went away: nothing more can be sent
                writer.cancel()
        except ProtocolError as e:
            if session is None:
                self.metrics.errors.labels(e.code).inc()
                with contextlib.suppress(Exception):
                    await ws.send_text(dumps(e.to_json()))
                    await ws.close(e.close_code)
            else:
                self.fail(session, e)
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        except Exception as e:  # noqa: BLE001 - keep the server up, tell the client
            log.exception("session failed")
            if session is not None:
                self.fail(session, ProtocolError("internal", f"The server failed ({type(e).__name__})."))
        finally:
            if writer is not None and not writer.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(writer, 5.0)
            if pump is not None:
                pump.stop()
            if session is not None:
                self.engine.close(session, drain=False)
                self.registry.finish(session)
                if session.source["kind"] == "upload":
                    self.uploads.remove(session.source["id"])

    async def _start_message(self, ws: WebSocket) -> Start:
        try:
            msg = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ProtocolError("protocol", f"No start message within {START_TIMEOUT_S:g} s.") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        if msg.get("text") is None:
            raise ProtocolError("protocol", "The first message must be the JSON start message, not binary.")
        start = parse_text(msg["text"], max_bytes=self.cfg.max_message_bytes,
                           max_question_chars=self.cfg.max_question_chars)
        if not isinstance(start, Start):
            raise ProtocolError("protocol", "The first message must be a start message.")
        if not secrets.compare_digest(start.token.encode(), self.cfg.token.encode()):
            raise ProtocolError("auth", "The token is wrong.")
        return start

    async def _admit(self, ws: WebSocket, start: Start):
        """Check the source, take a registry place and open a server-side source -> (session, frames)."""
        kind, path = start.source["kind"], None
        if kind == "url":
            if not self.cfg.allow_server_sources:
                raise ProtocolError("source", "This server does not read server-side files or URLs; stream your "
                                              "camera or upload a file.")
            path = start.source["url"]
        elif kind == "upload":
            path = self.uploads.path(start.source["id"])
            if path is None:
                raise ProtocolError("source", f"No uploaded file has id {start.source['id']!r}; upload it first.")
        client = ws.client.host if ws.client else "unknown"
        session = Session(client, start.source, start.query, asyncio.get_running_loop(), self.cfg.outbox)
        self.registry.admit(session)
        frames = None
        if path is not None:
            try:
                frames = await asyncio.to_thread(open_source, path, self.cfg.fps, self.cfg.frame_hw,
                                                 self.cfg.source_timeout_s)
            except (ValueError, OSError) as e:  # VideoError is a ValueError
                self.registry.finish(session)
                raise ProtocolError("source", str(e)) from None
        return session, frames

    async def _connect(self, session: Session, frames) -> SourcePump | None:
        """Take a slot, start a server-side source and send "ready"."""
        try:
            slot = await asyncio.wrap_future(self.engine.open(session))
        except BaseException:
            if frames is not None:
                frames.close()
            raise
        pump = None
        if frames is not None:
            def on_end(exc: BaseException | None) -> None:
                if exc is None:
                    self.engine.close(session, drain=True)
                else:
                    self.fail(session, ProtocolError("source", f"The source failed: {exc}"))
            pump = SourcePump(frames, self.cfg.frame_hw, lambda sec: self.engine.offer(session, sec), on_end,
                              preview=session.send)
            pump.start()
            session.origin = pump.origin
        c = self.cfg
        session.send({"type": "ready", "session": session.id, "slot": slot, "fps": c.fps, "frame": list(c.frame_hw),
                      "source": session.source["kind"],
                      "limits": {"max_frame_bytes": c.max_frame_bytes, "max_client_fps": c.max_client_fps,
                                 "max_question_chars": c.max_question_chars,
                                 "max_message_bytes": c.max_message_bytes},
                      "transcript": {f: f"/api/sessions/{session.id}/transcript.{f}" for f in FORMATS}})
        return pump

    async def _read(self, ws: WebSocket, session: Session) -> None:
        """Frames, questions and stop from the client, until it disconnects."""
        cfg = self.cfg
        assembler = SecondAssembler(cfg.fps)
        bucket = TokenBucket(cfg.max_client_fps)
        stopping = False
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is not None:
                if session.source["kind"] != "camera":
                    raise ProtocolError("protocol", "Frames are accepted from camera sessions only; this session "
                                                    "reads a server-side source.")
                if stopping:
                    continue
                if not bucket.take():
                    raise ProtocolError("rate", f"More than {cfg.max_client_fps:g} frames per second were sent.")
                arrived = time.monotonic()
                t, jpeg = parse_frame(data, max_bytes=cfg.max_frame_bytes)
                seconds = await asyncio.to_thread(_add_frame, assembler, t, jpeg, cfg.frame_hw)
                if session.origin is None:
                    session.origin = arrived - t
                for sec in seconds:
                    self.engine.offer(session, sec)
                continue
            m = parse_text(msg.get("text") or "", max_bytes=cfg.max_message_bytes,
                           max_question_chars=cfg.max_question_chars)
            if isinstance(m, Start):
                raise ProtocolError("protocol", "This session has already started.")
            if isinstance(m, Ask):
                self.engine.ask(session, m.text)
            elif isinstance(m, Stop) and not stopping:
                stopping = True
                last = assembler.flush() if session.source["kind"] == "camera" else None
                if last is not None:
                    self.engine.offer(session, last)
                self.engine.close(session, drain=True)

    # ------------------------------------------------------------------ app
    def app(self) -> Starlette:
        """The ASGI application; its lifespan starts and stops the engine and deletes uploads."""
        @contextlib.asynccontextmanager
        async def lifespan(app):
            if self.warmup:
                h, w = self.cfg.frame_hw
                blank = make_second(0, [np.zeros((h, w, 3), np.uint8)] * self.cfg.fps, self.cfg.fps)
                took = await asyncio.to_thread(self.engine.warmup, blank)
                log.info("compiled the step in %.1f s", took)
            self.engine.start()
            if self.on_ready is not None:
                self.on_ready()
            try:
                yield
            finally:
                await asyncio.to_thread(self.engine.shutdown)
                self.uploads.cleanup()

        routes = [Route("/", self.index), Route("/health", self.health), Route("/metrics", self.metrics_text),
                  Route("/api/upload", self.upload, methods=["POST"]),
                  Route("/api/sessions/{sid}/transcript.{fmt}", self.transcript),
                  WebSocketRoute("/ws", self.websocket), Mount("/static", StaticFiles(directory=STATIC))]
        app = Starlette(routes=routes, lifespan=lifespan)
        app.state.server = self
        return app


def _add_frame(assembler: SecondAssembler, t: float, jpeg: bytes, frame_hw) -> list:
    """Decode one JPEG and add it to the session's assembler (a worker thread) -> completed seconds."""
    return assembler.add(t, decode_jpeg(jpeg, frame_hw))


async def _write(ws: WebSocket, session: Session) -> None:
    """Send the session's outbox in order; a ("close", code) item closes the socket and ends the writer."""
    while True:
        item = await session.outbox.get()
        if isinstance(item, tuple) and item[0] == CLOSE:
            with contextlib.suppress(Exception):
                await ws.close(item[1])
            return
        if isinstance(item, bytes):
            await ws.send_bytes(item)
        else:
            await ws.send_text(dumps(item))


def _http_error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"type": "error", "code": code, "message": message}, status_code=status)


def create_app(cfg: ServerConfig, streamer, info: dict[str, Any] | None = None, *, warmup: bool = True,
               on_ready=None) -> Starlette:
    """A Starlette app serving `streamer` (a `Streamer` with cfg.max_sessions slots) under `cfg`.

    info: extra fields for /health (e.g. the checkpoint). warmup: compile the step at startup, before
    the first session. on_ready: called once the engine runs. Run it with uvicorn, with
    ws_max_size=ws_max_size(cfg) so oversize messages are cut at the transport.
    """
    return Server(cfg, streamer, info, warmup=warmup, on_ready=on_ready).app()
