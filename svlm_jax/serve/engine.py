"""The engine: one thread that owns the batched `Streamer` and steps every active session's next second.

Sessions hand it complete seconds with `offer` (from the event loop or a source thread). Each session
holds at most one pending second: a newer one replaces it and the older is counted as skipped, so a
live source never queues, whatever the step time. Once one session has a second ready, the step waits up
to `batch_wait_s` for the other producing sessions' seconds, then runs one `Streamer.step` for all of
them (idle slots get None). Opening, closing and questions are commands the thread carries out between
steps, because the `Streamer` is not thread-safe. Nothing here runs on the event loop.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any

from svlm_jax.errors import StreamInputError
from svlm_jax.serve.metrics import Metrics
from svlm_jax.serve.protocol import ProtocolError
from svlm_jax.serve.session import Session

log = logging.getLogger("svlm_jax.serve")
PRODUCING_S = 2.0  # a session that offered a second this recently is waited for when gathering a batch


class Engine:
    """Steps `streamer` (a `svlm_jax.stream.Streamer` with B slots) for the sessions that hold its slots."""

    def __init__(self, streamer, metrics: Metrics, *, batch_wait_s: float = 0.5, clock=time.monotonic):
        self.st, self.metrics, self.batch_wait_s, self.clock = streamer, metrics, batch_wait_s, clock
        for slot in range(streamer.batch):  # a new Streamer opens every slot; the server starts empty
            if streamer.is_open(slot):
                streamer.close(slot)
        self._cv = threading.Condition()
        self._cmds: collections.deque = collections.deque()
        self._by_slot: dict[int, Session] = {}
        self._draining: list[Session] = []
        self._stop = False
        self.steps = 0
        self.last_step_s = 0.0
        self._thread = threading.Thread(target=self._run, name="svlm-engine", daemon=True)

    def warmup(self, second) -> float:
        """Compile the step before serving: one second in a slot opened and closed again (opening resets a
        slot, so nothing of it stays visible). Call before `start`; returns the seconds it took. The step's
        shapes depend on the frame size alone, not on how many sessions are active, so one second does."""
        t0 = self.clock()
        slot = self.st.open(stream_id=0)
        try:
            self.st.step([second if b == slot else None for b in range(self.st.batch)])
        finally:
            self.st.close(slot)
        return self.clock() - t0

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop after the current step and wait for the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def open(self, session: Session) -> concurrent.futures.Future:
        """Give `session` a free slot; the future's result is the slot, or a ProtocolError("full")."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._command(("open", session, fut))
        return fut

    def ask(self, session: Session, text: str) -> None:
        """Queue a question for the session's next second."""
        self._command(("ask", session, text))

    def close(self, session: Session, *, drain: bool) -> None:
        """Free the session's slot: after its pending second is commentated (drain) or at once.

        A drained session gets a final "end" message; either way the slot is free afterwards.
        """
        self._command(("close", session, drain))

    def offer(self, session: Session, second) -> Any | None:
        """Make `second` the session's next second; returns the second it replaced (skipped), if any."""
        now = self.clock()
        with self._cv:
            if session.slot is None or self._by_slot.get(session.slot) is not session:
                return None
            dropped = session.pending
            if dropped is None:
                session.pending_at = now
            session.pending, session.last_offer = second, now
            self._cv.notify_all()
        if dropped is not None:
            session.skipped += 1
            self.metrics.skipped.inc()
            session.send({"type": "skipped", "t0": dropped.t0, "t1": dropped.t1, "total": session.skipped})
        return dropped

    @property
    def active(self) -> int:
        """Sessions holding a slot."""
        return len(self._by_slot)

    def _command(self, cmd) -> None:
        with self._cv:
            self._cmds.append(cmd)
            self._cv.notify_all()

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._cmds or any(s.pending is not None for s in self._by_slot.values())):
                    self._cv.wait()
                if self._stop:
                    return
                cmds = list(self._cmds)
                self._cmds.clear()
            for cmd in cmds:
                self._do(cmd)
            if self._gather():
                with self._cv:  # a question or close that came while gathering applies to this step
                    cmds = list(self._cmds)
                    self._cmds.clear()
                for cmd in cmds:
                    self._do(cmd)
                batch = self._take()
                if batch is not None:
                    self._step(*batch)
            for s in [s for s in self._draining if s.pending is None]:
                self._draining.remove(s)
                self._release(s)
                s.send({"type": "end", **s.summary()})
                s.close_socket(1000)

    def _do(self, cmd) -> None:
        kind, s, arg = cmd
        try:
            if kind == "open":
                if self.st.free_slots:
                    try:
                        slot = self.st.open(query=s.query, stream_id=s.stream_id) if s.query is not None \
                            else self.st.open(stream_id=s.stream_id)
                    except ValueError as e:  # the client's query does not fit query_tokens: its error, not ours
                        arg.set_exception(ProtocolError("question", f"The query does not fit: {e}"))
                        return
                    with self._cv:
                        s.slot = slot
                        self._by_slot[slot] = s
                    arg.set_result(slot)
                else:
                    arg.set_exception(ProtocolError("full", f"The server is full: all {self.st.batch} session "
                                                            f"slots are in use."))
            elif kind == "ask":
                if self._by_slot.get(s.slot) is s:
                    try:
                        self.st.ask(s.slot, arg)
                    except ValueError as e:  # e.g. too many tokens: the session goes on without it
                        s.send({"type": "rejected", "code": "question", "question": arg, "message": str(e)})
                        return
                    s.questions += 1
                    self.metrics.questions.inc()
            elif kind == "close":
                if self._by_slot.get(s.slot) is not s or s in self._draining:
                    return
                if arg and s.pending is not None:
                    self._draining.append(s)  # closed after the next step commentates its last second
                else:
                    self._release(s)
                    if arg:
                        s.send({"type": "end", **s.summary()})
                        s.close_socket(1000)
        except Exception as e:  # noqa: BLE001 - one session's failure must not stop the engine
            log.exception("engine command %s failed for session %s", kind, s.id)
            if kind == "open":
                arg.set_exception(e)
            else:
                self._fail(s, "internal", f"The server failed to {kind} for this session ({type(e).__name__}).")

    def _release(self, s: Session) -> None:
        with self._cv:
            if s.slot is None or self._by_slot.get(s.slot) is not s:
                return
            del self._by_slot[s.slot]
            s.pending = None
        self.st.close(s.slot)

    def _fail(self, s: Session, code: str, message: str) -> None:
        self._release(s)
        err = ProtocolError(code, message)
        s.error = err.to_json()
        self.metrics.errors.labels(code).inc()
        s.send(s.error)
        s.close_socket(err.close_code)

    def _fail_step(self, members: list[Session], e: BaseException) -> None:
        log.error("the step failed for %d session(s)", len(members), exc_info=e)
        for s in members:
            self._fail(s, "internal", f"The model step failed ({type(e).__name__}); the server goes on.")

    def _gather(self) -> bool:
        """Wait up to batch_wait_s for the producing sessions' seconds; False if no second is ready."""
        with self._cv:
            ready = [s for s in self._by_slot.values() if s.pending is not None]
            if not ready:
                return False
            deadline = min(s.pending_at for s in ready) + self.batch_wait_s
            while not self._stop:
                now = self.clock()
                waiting = [s for s in self._by_slot.values() if s.pending is None and s.last_offer is not None
                           and now - s.last_offer < PRODUCING_S + self.last_step_s]
                if not waiting or now >= deadline:
                    break
                self._cv.wait(deadline - now)
            return True

    def _take(self):
        """Take every pending second -> (seconds by slot, sessions), or None if none is left."""
        with self._cv:
            seconds: list[Any] = [None] * self.st.batch
            members = []
            for s in self._by_slot.values():
                if s.pending is not None:
                    seconds[s.slot], s.pending = s.pending, None
                    members.append(s)
        return (seconds, members) if members else None

    def _step(self, seconds: list, members: list[Session]) -> None:
        """One batched step. A second that one session's input made unsteppable (StreamInputError, raised before
        the Streamer changes any state) ends that session alone, and the step runs again for the others; any
        other failure is the server's: logged with its traceback, it ends this step's sessions with "internal"."""
        t0 = self.clock()
        while True:
            try:
                comments = self.st.step(seconds)
                break
            except StreamInputError as e:
                bad = next((s for s in members if s.slot == e.stream), None)
                if bad is None:  # not tied to one of this step's sessions: a server error
                    self._fail_step(members, e)
                    return
                log.info("session %s: its second could not be stepped: %s", bad.id, e)
                members.remove(bad)
                seconds[bad.slot] = None
                self._fail(bad, "bad_frame", f"This session's second cannot be commentated ({e}).")
                if not members:
                    return
            except Exception as e:  # noqa: BLE001 - fail the sessions of this step, keep serving
                self._fail_step(members, e)
                return
        now = self.clock()
        self.last_step_s = now - t0
        self.steps += 1
        self.metrics.step.observe(self.last_step_s)
        self.metrics.step_active.set(len(members))
        lag_offset = (seconds[members[0].slot].fps - 1) / seconds[members[0].slot].fps  # last sample of a second
        for s in members:
            c = comments[s.slot]
            if c is None:
                continue
            lag = None if s.origin is None else round(now - (s.origin + seconds[s.slot].t0 + lag_offset), 4)
            if lag is not None:
                self.metrics.lag.observe(max(0.0, lag))
            s.seconds += 1
            self.metrics.seconds.inc()
            timing = {"lag_s": lag, "step_ms": round(1e3 * self.last_step_s, 2), "active": len(members)}
            question = getattr(c, "question", None)
            if question is not None:
                s.record({"type": "answer", "t0": c.t0, "t1": c.t1, "question": question,
                          "text": getattr(c, "answer", "") or "", **timing})
            s.record({"type": "comment", "t0": c.t0, "t1": c.t1, "text": c.text, "tokens": c.n_tokens,
                      "vision_ms": round(c.vision_ms, 2), "prefill_ms": round(c.prefill_ms, 2),
                      "decode_ms": round(c.decode_ms, 2), "skipped": s.skipped, "partial": c.partial, **timing})
