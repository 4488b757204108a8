"""Run a server on 127.0.0.1 in a background thread (tests and benchmarks): a real uvicorn, a real socket."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from svlm_jax.serve.app import create_app, ws_max_size
from svlm_jax.serve.config import ServerConfig


class ThreadedServer:
    """uvicorn serving `create_app(cfg, streamer)` on 127.0.0.1 and a free port, in a daemon thread.

    Use as a context manager: entering waits until the server accepts connections; leaving shuts it
    down (the engine thread included). `url` is http://127.0.0.1:PORT, `ws_url` the session socket,
    `app.state.server` the `Server`.
    """

    def __init__(self, cfg: ServerConfig, streamer, *, log_level: str = "warning"):
        self.cfg = cfg
        self.app = create_app(cfg, streamer)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url, self.ws_url = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}/ws"
        config = uvicorn.Config(self.app, ws_max_size=ws_max_size(cfg), log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
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
