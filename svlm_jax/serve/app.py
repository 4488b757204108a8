"""The Starlette application: the page, /health, /metrics, uploads, transcripts and one WebSocket per session.

Nothing here blocks the event loop: JPEG decoding and opening a source run in worker threads, the model
step in the engine's thread, and server-side sources in their own threads. Every client is treated as
hostile: a browser page from another origin is refused, wrong tokens are throttled per address, and no
answer to an unauthenticated request names a path on the host.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import urllib.parse
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.engine import Engine
from svlm_jax.serve.frames import SecondAssembler, decode_jpeg, make_second
from svlm_jax.serve.limits import AddressThrottle, TokenBucket
from svlm_jax.serve.metrics import Metrics
from svlm_jax.serve.protocol import Ask, ProtocolError, Start, Stop, dumps, parse_frame, parse_text
from svlm_jax.serve.session import CLOSE, Registry, Session
from svlm_jax.serve.sources import (MEDIA_FORMATS, REFUSED, SourcePolicy, SourcePump, SourceRefused, UploadRefused,
                                   Uploads, open_source)
from svlm_jax.serve.transcript import FORMATS

log = logging.getLogger("svlm_jax.serve")
STATIC = os.path.join(os.path.dirname(__file__), "static")
EXPIRE_EVERY_S = 10.0  # how often unclaimed uploads are looked for
ORIGIN_REFUSED = 4403  # close code of a WebSocket refused before it is accepted (the client sees HTTP 403)


def ws_max_size(cfg: ServerConfig) -> int:
    """The transport's cap on one WebSocket message: room for a frame twice the limit, so a frame somewhat
    over the limit still gets the protocol's JSON error; far larger ones are cut off by the transport."""
    return 2 * max(cfg.max_frame_bytes, cfg.max_message_bytes) + 1024


def same_origin(origin: str, host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a browser page at `origin` may open a session: the page's own origin (its host:port is the
    request's Host) or one of `allowed` ("scheme://host[:port]"). The opaque origin "null" never may."""
    origin = origin.strip().lower().rstrip("/")
    if origin in {a.strip().lower().rstrip("/") for a in allowed}:
        return True
    u = urllib.parse.urlsplit(origin)
    return u.scheme in ("http", "https") and bool(u.netloc) and u.netloc == (host or "").strip().lower()


class Server:
    """The state of one running server: config, engine, sessions, uploads, sources and metrics."""

    def __init__(self, cfg: ServerConfig, streamer, info: dict[str, Any] | None = None, *, warmup: bool = True,
                 on_ready=None):
        self.cfg, self.info, self.warmup, self.on_ready = cfg, dict(info or {}), warmup, on_ready
        self.metrics = Metrics(cfg.max_sessions)
        self.engine = Engine(streamer, self.metrics, batch_wait_s=cfg.batch_wait_s)
        self.registry = Registry(cfg, self.metrics)
        self.uploads = Uploads(max_bytes=cfg.max_upload_bytes, per_client=cfg.uploads_per_client,
                               client_bytes=cfg.upload_client_bytes, max_count=cfg.max_uploads,
                               total_bytes=cfg.upload_total_bytes, ttl_s=cfg.upload_ttl_s)
        self.sources = SourcePolicy(cfg.source_roots, cfg.allow_urls)
        self.auth_failures = AddressThrottle(cfg.auth_failures_per_min)

    # ------------------------------------------------------------------ http
    def check_token(self, client: str, token: str | None) -> ProtocolError | None:
        """None when `token` is the server's; else the error to answer with ("throttled" once the address
        has spent its tries: then even the right token is refused until tries come back)."""
        if self.auth_failures.blocked(client):
            self.metrics.refused.labels("throttled").inc()
            return ProtocolError("throttled", "Too many wrong tokens came from this address; wait a minute.")
        if isinstance(token, str) and secrets.compare_digest(token.encode(), self.cfg.token.encode()):
            return None
        self.auth_failures.spend(client)
        return ProtocolError("auth", "The token is wrong or missing.")

    def http_auth(self, request: Request) -> Response | None:
        """None for a request with the token in `Authorization: Bearer`; else the 401/429 response."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        err = self.check_token(_client(request), token)
        if err is None:
            return None
        return _http_error(429 if err.code == "throttled" else 401, err.code,
                           "Pass the server's token as 'Authorization: Bearer TOKEN'." if err.code == "auth" else str(err))

    async def index(self, request: Request) -> Response:
        """GET /: the page."""
        return FileResponse(os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-store"})

    async def favicon(self, request: Request) -> Response:
        """GET /favicon.ico: the page's icon."""
        return FileResponse(os.path.join(STATIC, "favicon.svg"), media_type="image/svg+xml")

    async def health(self, request: Request) -> Response:
        """GET /health: status, session counts, steps, frame settings and the `info` fields."""
        return JSONResponse({"status": "ok", "sessions": len(self.registry.live), "max_sessions": self.cfg.max_sessions,
                             "steps": self.engine.steps, "fps": self.cfg.fps, "frame": list(self.cfg.frame_hw),
                             **self.info})

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: the Prometheus text exposition."""
        self.metrics.uploads.set(self.uploads.count)
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def transcript(self, request: Request) -> Response:
        """GET /api/sessions/{sid}/transcript.{vtt,jsonl} (token): a live or recently finished transcript."""
        if (refused := self.http_auth(request)) is not None:
            return refused
        fmt = request.path_params["fmt"]
        s = self.registry.get(request.path_params["sid"])
        if fmt not in FORMATS or s is None:
            return _http_error(404, "not_found", "No such session transcript; sessions and formats (vtt, jsonl) "
                                                 "are listed in docs/SERVING.md.")
        media, render = FORMATS[fmt]
        return Response(render(list(s.entries)), media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="session-{s.id}.{fmt}"'})

    async def upload(self, request: Request) -> Response:
        """POST /api/upload (token): store the raw body as a video for an "upload" session -> {"id", "bytes"}.

        Within the per-client and total quotas; the file is deleted on any failure, a client that goes away
        mid-upload included, and when no session claims it within upload_ttl_s."""
        if (refused := self.http_auth(request)) is not None:
            return refused
        limit = self.cfg.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _http_error(413, "too_large", f"An upload of {declared} bytes exceeds the limit of {limit} bytes.")
        try:
            uid, tmp = self.uploads.reserve(_client(request))
        except UploadRefused as e:
            return _http_error(e.status, e.code, str(e))
        published, size = False, 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    self.uploads.grow(uid, len(chunk))
                    f.write(chunk)
            if size == 0:
                return _http_error(400, "empty", "The upload is empty; send the video file as the request body.")
            self.uploads.commit(uid)
            published = True
            return JSONResponse({"id": uid, "bytes": size})
        except UploadRefused as e:
            return _http_error(e.status, e.code, str(e))
        except ClientDisconnect:  # the client went away mid-upload: nobody is left to answer
            log.info("an upload was cut off after %d bytes; deleted", size)
            return Response(status_code=400)
        except OSError as e:
            log.warning("an upload could not be written (%s); deleted", e)
            return _http_error(507, "storage", "The server cannot store the upload now; try again later.")
        finally:
            if not published:
                self.uploads.discard(uid)

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
        """/ws: one session from its start message to its end, error or disconnect; always frees its slot
        and deletes the upload it claimed."""
        origin = ws.headers.get("origin")
        if origin is not None and not same_origin(origin, ws.headers.get("host"), self.cfg.allowed_origins):
            # A page from another site (or a sandboxed one) holds no right to the viewer's session.
            self.metrics.refused.labels("origin").inc()
            await ws.close(ORIGIN_REFUSED)
            return
        await ws.accept()
        session: Session | None = None
        pump: SourcePump | None = None
        writer = None
        claimed: list[str] = []
        try:
            start = await self._start_message(ws)
            session, frames = await self._admit(ws, start, claimed)
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
            for uid in claimed:
                self.uploads.discard(uid)

    async def _start_message(self, ws: WebSocket) -> Start:
        timeout = self.cfg.start_timeout_s
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout)
        except asyncio.TimeoutError:
            raise ProtocolError("protocol", f"No start message within {timeout:g} s.") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        if msg.get("text") is None:
            raise ProtocolError("protocol", "The first message must be the JSON start message, not binary.")
        start = parse_text(msg["text"], max_bytes=self.cfg.max_message_bytes,
                           max_question_chars=self.cfg.max_question_chars)
        if not isinstance(start, Start):
            raise ProtocolError("protocol", "The first message must be a start message.")
        err = self.check_token(_client(ws), start.token)
        if err is not None:
            raise err
        return start

    async def _admit(self, ws: WebSocket, start: Start, claimed: list[str]):
        """Take a registry place, claim an upload or check a server-side source, and open it -> (session,
        frames). A refused or failed source gets REFUSED, which tells nothing about the host; the log has why."""
        session = Session(_client(ws), start.source, start.query, asyncio.get_running_loop(), self.cfg.outbox)
        self.registry.admit(session)
        kind, target, options = start.source["kind"], None, {}
        try:
            if kind == "upload":
                target = self.uploads.claim(start.source["id"])
                if target is None:
                    raise ProtocolError("source", "No unused upload has this id; upload the file first (an upload "
                                                  "serves one session and expires when none claims it).")
                claimed.append(start.source["id"])
                options = {"protocol_whitelist": "file", "format_whitelist": MEDIA_FORMATS}
            elif kind == "url":
                try:
                    target, options = await asyncio.to_thread(self.sources.resolve, start.source["url"])
                except SourceRefused as e:
                    log.info("session %s: source refused: %s", session.id, e)
                    raise ProtocolError("source", REFUSED) from None
            frames = None
            if target is not None:
                c = self.cfg
                try:
                    frames = await asyncio.to_thread(open_source, target, options, c.fps, c.frame_hw,
                                                     c.source_timeout_s, sampling=c.sampling, resize=c.resize)
                except (ValueError, OSError) as e:  # VideoError is a ValueError
                    log.info("session %s: source failed to open: %s", session.id, e)
                    raise ProtocolError("source", REFUSED) from None
        except BaseException:
            self.registry.finish(session)
            raise
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
                    log.info("session %s: source failed: %s", session.id, exc)
                    self.fail(session, ProtocolError("source", "The source could not be read further."))
            pump = SourcePump(frames, self.cfg.frame_hw, lambda sec: self.engine.offer(session, sec), on_end,
                              preview=session.send, resize=self.cfg.resize)
            pump.start()
            session.origin = pump.origin
        c = self.cfg
        session.ready_at = time.monotonic()
        session.send({"type": "ready", "session": session.id, "slot": slot, "fps": c.fps, "frame": list(c.frame_hw),
                      "source": session.source["kind"],
                      "limits": {"max_frame_bytes": c.max_frame_bytes, "max_client_fps": c.max_client_fps,
                                 "max_question_chars": c.max_question_chars,
                                 "max_message_bytes": c.max_message_bytes, "clock_ahead_s": c.clock_ahead_s},
                      "transcript": {f: f"/api/sessions/{session.id}/transcript.{f}" for f in FORMATS}})
        return pump

    async def _read(self, ws: WebSocket, session: Session) -> None:
        """Frames, questions and stop from the client, until it disconnects."""
        cfg = self.cfg
        assembler = SecondAssembler(cfg.fps)
        bucket = TokenBucket(cfg.max_client_fps)
        stopping, last_t = False, -1.0
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
                t, jpeg = parse_frame(data, max_bytes=cfg.max_frame_bytes, after=last_t,
                                      latest=arrived - session.ready_at + cfg.clock_ahead_s)
                last_t = t
                seconds = await asyncio.to_thread(_add_frame, assembler, t, jpeg, cfg.frame_hw, cfg.resize)
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
                if not m.text or len(m.text) > cfg.max_question_chars:
                    session.send({"type": "rejected", "code": "question", "question": m.text[:cfg.max_question_chars],
                                  "message": f"A question must have 1 to {cfg.max_question_chars} characters; this "
                                             f"one has {len(m.text)}."})
                else:
                    self.engine.ask(session, m.text)
            elif isinstance(m, Stop) and not stopping:
                stopping = True
                last = assembler.flush() if session.source["kind"] == "camera" else None
                if last is not None:
                    self.engine.offer(session, last)
                self.engine.close(session, drain=True)

    # ------------------------------------------------------------------ app
    def app(self) -> Starlette:
        """The ASGI application; its lifespan starts and stops the engine, expires and deletes uploads."""
        @contextlib.asynccontextmanager
        async def lifespan(app):
            if self.warmup:
                h, w = self.cfg.frame_hw
                blank = make_second(0, [np.zeros((h, w, 3), np.uint8)] * self.cfg.fps, self.cfg.fps)
                took = await asyncio.to_thread(self.engine.warmup, blank)
                log.info("compiled the step in %.1f s", took)
            self.engine.start()
            expiry = asyncio.create_task(self._expire_uploads())
            if self.on_ready is not None:
                self.on_ready()
            try:
                yield
            finally:
                expiry.cancel()
                await asyncio.to_thread(self.engine.shutdown)
                self.uploads.cleanup()

        routes = [Route("/", self.index), Route("/favicon.ico", self.favicon), Route("/health", self.health),
                  Route("/metrics", self.metrics_text), Route("/api/upload", self.upload, methods=["POST"]),
                  Route("/api/sessions/{sid}/transcript.{fmt}", self.transcript),
                  WebSocketRoute("/ws", self.websocket), Mount("/static", StaticFiles(directory=STATIC))]
        app = Starlette(routes=routes, lifespan=lifespan)
        app.state.server = self
        return app

    async def _expire_uploads(self) -> None:
        while True:
            await asyncio.sleep(min(EXPIRE_EVERY_S, self.cfg.upload_ttl_s / 2))
            if n := self.uploads.expire():
                log.info("deleted %d upload(s) that no session claimed within %g s", n, self.cfg.upload_ttl_s)


def _client(conn: Request | WebSocket) -> str:
    """The client's address: the socket's peer, or X-Forwarded-For's from a trusted proxy (uvicorn applies
    it only for the addresses in ServerConfig.trusted_proxies, `runner.uvicorn_config`)."""
    return conn.client.host if conn.client else "unknown"


def _add_frame(assembler: SecondAssembler, t: float, jpeg: bytes, frame_hw, resize: str) -> list:
    """Decode one JPEG and add it to the session's assembler (a worker thread) -> completed seconds."""
    return assembler.add(t, decode_jpeg(jpeg, frame_hw, resize))


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

    info: extra fields for /health (e.g. the checkpoint's name; it is served without a token, so no paths).
    warmup: compile the step at startup, before the first session. on_ready: called once the engine runs.
    Run it with uvicorn through `runner.uvicorn_config`, which adds the connection guard and the proxy rules.
    """
    return Server(cfg, streamer, info, warmup=warmup, on_ready=on_ready).app()
