"""uvicorn for a commentary app (`uvicorn_config`: the connection guard, the proxy rules, no token in the
access log) and a server on 127.0.0.1 in a background thread (`ThreadedServer`, for tests and benchmarks)."""
from __future__ import annotations

import logging
import re
import socket
import threading
import time

import uvicorn

from svlm_jax.serve.app import create_app, ws_max_size
from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.guard import ConnectionGuard, connection_cap, guarded_protocols

_TOKEN_IN_QUERY = re.compile(r"(?i)((?:^|[?&;])[^=&;]*token[^=&;]*=)[^&;\s]*")


class RedactTokens(logging.Filter):
    """Blanks the value of any query parameter named like "token" in uvicorn's log lines (HTTP access lines and
    WebSocket handshakes): the server reads tokens from headers and messages only, but a client may still put
    one in a URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1REDACTED", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def uvicorn_config(app, *, log_level: str = "info", **kw) -> uvicorn.Config:
    """A uvicorn.Config for `app` (from `create_app`): HTTP and WebSocket protocols under the app's connection
    guard (caps under the file-descriptor limit, checked and logged here), X-Forwarded-For honoured only from
    ServerConfig.trusted_proxies, the transport's message cap, and tokens kept out of the access log.
    kw: more uvicorn.Config arguments (host, port, ...)."""
    server = app.state.server
    cfg: ServerConfig = server.cfg
    guard = ConnectionGuard(connection_cap(cfg), cfg.connections_per_client, cfg.handshake_timeout_s, server.metrics,
                            exempt=cfg.trusted_proxies)
    http, ws = guarded_protocols(guard)
    trusted = list(cfg.trusted_proxies)
    config = uvicorn.Config(app, http=http, ws=ws, ws_max_size=ws_max_size(cfg), log_level=log_level, lifespan="on",
                            proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
                            timeout_keep_alive=5, **kw)
    for name in ("uvicorn.access", "uvicorn.error"):  # HTTP requests; WebSocket handshakes ("accepted")
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    return config


class ThreadedServer:
    """uvicorn serving `create_app(cfg, streamer)` on 127.0.0.1 and a free port, in a daemon thread.

    Use as a context manager: entering waits until the server accepts connections; leaving shuts it
    down (the engine thread included). `url` is http://127.0.0.1:PORT, `ws_url` the session socket,
    `state` the `Server`. warmup=False skips compiling the step at startup (the first second compiles it).
    """

    def __init__(self, cfg: ServerConfig, streamer, *, log_level: str = "warning", warmup: bool = True,
                 info: dict | None = None):
        self.cfg = cfg
        self.app = create_app(cfg, streamer, info, warmup=warmup)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url, self.ws_url = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}/ws"
        self.server = uvicorn.Server(uvicorn_config(self.app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="svlm-uvicorn")

    @property
    def state(self):
        """The running `Server` (engine, registry, metrics)."""
        return self.app.state.server

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 900  # startup compiles the step: minutes on a busy CPU
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The server did not start; see its log above.")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
