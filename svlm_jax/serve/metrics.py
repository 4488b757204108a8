"""Prometheus metrics of one server, in a registry of its own (several servers may share a process)."""
from __future__ import annotations

import threading

import jax
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_compiles = 0
_compiles_lock = threading.Lock()
_listening = False


def _on_event(name: str, *args, **kwargs) -> None:
    global _compiles
    if name == "/jax/core/compile/backend_compile_duration":
        with _compiles_lock:
            _compiles += 1


def compile_count() -> int:
    """XLA backend compilations in this process since the first server's metrics were made."""
    return _compiles


def _listen_for_compiles() -> None:
    global _listening
    if not _listening:  # jax keeps listeners for the life of the process: register once
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening = True


STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    """Sessions, step latency, lag behind real time, skipped seconds, questions, errors, compiles, connections
    and uploads."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_sessions: int):
        _listen_for_compiles()
        r = self.registry = CollectorRegistry()
        self.sessions = Gauge("svlm_sessions_active", "Sessions holding a slot of the batched step", registry=r)
        Gauge("svlm_sessions_max", "Slots of the batched step", registry=r).set(max_sessions)
        self.sessions_total = Counter("svlm_sessions", "Sessions started", registry=r)
        self.refused = Counter("svlm_sessions_refused", "Sessions refused", ["reason"], registry=r)
        self.errors = Counter("svlm_session_errors", "Sessions closed by an error", ["code"], registry=r)
        self.step = Histogram("svlm_step_seconds", "Wall time of one batched step", buckets=STEP_BUCKETS,
                              registry=r)
        self.step_active = Gauge("svlm_step_active_sessions", "Sessions with a second in the last step",
                                 registry=r)
        self.lag = Histogram("svlm_lag_seconds", "Delay from the end of a second of video to its commentary",
                             buckets=LAG_BUCKETS, registry=r)
        self.seconds = Counter("svlm_seconds", "Seconds of video commentated", registry=r)
        self.skipped = Counter("svlm_skipped_seconds", "Seconds dropped because the step fell behind",
                               registry=r)
        self.questions = Counter("svlm_questions", "Questions asked", registry=r)
        self.connections = Gauge("svlm_connections_open", "Open TCP connections (HTTP and WebSocket)", registry=r)
        self.connections_max = Gauge("svlm_connections_max", "Open TCP connections allowed at once", registry=r)
        self.connections_refused = Counter("svlm_connections_refused", "TCP connections closed before a request "
                                           "was served", ["reason"], registry=r)
        self.uploads = Gauge("svlm_uploads", "Uploads held on disk", registry=r)
        Gauge("svlm_jit_compiles", "XLA compilations in this process", registry=r).set_function(compile_count)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
