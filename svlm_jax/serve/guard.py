"""Limits before authentication: open connections per address and in all, under the file-descriptor limit,
and a deadline for a connection's request headers.

Anyone who can reach the port can open connections without a token, and each one holds a file descriptor.
Run out of them and no new session can connect. So every TCP connection is counted the moment it is
accepted. One over the per-address cap or the global cap is aborted there and then, before uvicorn parses
a byte of it. One that has not sent a complete request within `handshake_timeout_s` is aborted too. The
global cap is set below the process's file-descriptor limit (`connection_cap`), so accepting never fails
for lack of descriptors. A WebSocket's first message has its own deadline in the app (`start_timeout_s`).

`guarded_protocols` gives uvicorn's HTTP and WebSocket protocol classes with the guard built in.
"""
from __future__ import annotations

import logging
import os
import resource

from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.metrics import Metrics

log = logging.getLogger("svlm_jax.serve")
FD_PER_SESSION = 4  # a server-side source (file or socket, decoder) beside the session's own connection
FD_MARGIN = 32  # log files, the checkpoint, uploads being read, libraries opening files later


def fd_limit() -> int:
    """The soft limit on this process's open file descriptors (RLIMIT_NOFILE)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fds_in_use() -> int:
    """File descriptors this process holds now (Linux /proc; 0 where it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(cfg: ServerConfig) -> int:
    """How many connections may be open at once: cfg.max_connections, lowered to what the file-descriptor limit
    leaves after the descriptors in use, the sessions' sources, the uploads and a margin. Logs the numbers;
    raises ValueError when the limit leaves room for fewer connections than sessions."""
    limit, used = fd_limit(), fds_in_use()
    spare = limit - used - FD_PER_SESSION * cfg.max_sessions - cfg.max_uploads - FD_MARGIN
    if spare < cfg.max_sessions + 4:
        raise ValueError(f"The file-descriptor limit of {limit} (with {used} in use) leaves room for {max(spare, 0)} "
                         f"connections, too few for {cfg.max_sessions} sessions; raise it (ulimit -n 4096) or lower "
                         f"--max-sessions.")
    cap = spare if cfg.max_connections is None else min(cfg.max_connections, spare)
    if cfg.max_connections is not None and cfg.max_connections > spare:
        log.warning("--max-connections %d lowered to %d by the file-descriptor limit of %d", cfg.max_connections,
                    cap, limit)
    log.info("file-descriptor limit %d (%d in use): at most %d connections, %d per address", limit, used, cap,
             cfg.connections_per_client)
    return cap


def _peer(transport) -> str:
    info = transport.get_extra_info("peername")
    return str(info[0]) if isinstance(info, (tuple, list)) and info else "unknown"


class ConnectionGuard:
    """Counts open connections by transport and peer address; `admit` says whether one more may stay open.

    Peers in `exempt` (trusted proxies, through which every client comes) have no per-address cap.
    Used from the event loop only.
    """

    def __init__(self, cap: int, per_address: int, handshake_timeout_s: float, metrics: Metrics | None = None,
                 exempt=()):
        self.cap, self.per_address, self.handshake_timeout_s = cap, per_address, handshake_timeout_s
        self.metrics, self.exempt = metrics, frozenset(exempt)
        self._open: dict[object, str] = {}
        self._by_peer: dict[str, int] = {}
        if metrics is not None:
            metrics.connections_max.set(cap)

    def admit(self, transport) -> bool:
        """Count a new connection, or refuse it (False) when its address or the server is at its cap."""
        peer = _peer(transport)
        reason = None
        if len(self._open) >= self.cap:
            reason = "total"
        elif peer not in self.exempt and self._by_peer.get(peer, 0) >= self.per_address:
            reason = "per_client"
        if reason is not None:
            self.refused(reason)
            return False
        self._open[transport] = peer
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        self._gauge()
        return True

    def release(self, transport) -> None:
        """Forget a closed connection (any number of times)."""
        peer = self._open.pop(transport, None)
        if peer is None:
            return
        n = self._by_peer[peer] - 1
        if n:
            self._by_peer[peer] = n
        else:
            del self._by_peer[peer]
        self._gauge()

    def refused(self, reason: str) -> None:
        """Count a connection closed before it was served."""
        if self.metrics is not None:
            self.metrics.connections_refused.labels(reason).inc()

    @property
    def open(self) -> int:
        """Connections counted now."""
        return len(self._open)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.connections.set(len(self._open))


def guarded_protocols(guard: ConnectionGuard):
    """uvicorn's h11 HTTP protocol and websockets (sans-I/O) protocol, counted and capped by `guard`
    -> (http class, ws class), for uvicorn.Config(http=..., ws=...)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class GuardedH11Protocol(H11Protocol):
        """Aborted at once over a cap; aborted when no complete request arrives within the deadline."""

        _admitted = _upgraded = False
        _deadline = None
        _armed_for = None

        def connection_made(self, transport) -> None:
            if not guard.admit(transport):
                transport.abort()  # costs one accept and one close: nothing was read or allocated for it
                return
            self._admitted = True
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            if not self._admitted:
                return
            self._disarm()
            guard.release(self.transport)
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self.cycle is None or self.cycle.response_complete  # not serving a pipelined request
            if idle and not self.transport.is_closing():
                self._arm()  # the next request's headers get a deadline too (keep-alive data resets uvicorn's)

        def handle_websocket_upgrade(self, event) -> None:
            self._upgraded = True
            self._disarm()
            super().handle_websocket_upgrade(event)

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle
            self._deadline = self.loop.call_later(guard.handshake_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self._upgraded and self.cycle is self._armed_for and not self.transport.is_closing():
                guard.refused("handshake_timeout")
                self.transport.abort()

    class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
        """Releases the connection's place when the WebSocket closes (the HTTP protocol counted it)."""

        def connection_lost(self, exc) -> None:
            guard.release(self.transport)
            super().connection_lost(exc)

    return GuardedH11Protocol, GuardedWebSocketProtocol
