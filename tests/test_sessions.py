"""Sessions in a running batch and questions mid-stream (`Streamer.open/close/ask`) on a tiny random model:
joining and leaving changes no other session's output and compiles nothing, a reopened slot is a fresh
stream, and a question's answer comes from the same cache with the logits `forward` gives."""
import math

import jax
import numpy as np
import pytest

from svlm_jax import forward
from svlm_jax.prompt import DEFAULT_QUERY, build_prefix, build_round, question_text
from svlm_jax.stream import SlotsFull, Streamer, synthetic_seconds
from tests.test_stream import CFG, GREEDY, params, small, tok  # noqa: F401  (fixtures)

QA = dict(question_tokens=12, answer_tokens=5)


class Compiles:
    """Counts XLA compilations while active."""

    def __init__(self):
        self.n = 0

    def _listen(self, name, *_, **__):
        if name == "/jax/core/compile/backend_compile_duration":
            self.n += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


# Sessions of the batch run: (open at step, close after step, query, previous text, start, seed, {step: question}).
SESSIONS = {
    "a": (0, 8, DEFAULT_QUERY, None, 0.0, 20, {3: "what ball"}),
    "b": (2, 4, None, "red ball bounces", 50.0, 21, {}),
    "c": (3, 8, "red ball", None, 7.0, 22, {5: "goal"}),
    "d": (5, 8, DEFAULT_QUERY, "what a shot", 100.0, 23, {}),  # reuses the slot b left
}


def _seconds(name):
    first, last, _, _, start, seed, _ = SESSIONS[name]
    return list(synthetic_seconds(CFG, (4, 4), seconds=last - first, start=start, seed=seed))


def _solo(params, tok, name, scfg):  # noqa: F811
    first, _, query, prev, _, _, asks = SESSIONS[name]
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, query=query, previous_text=prev)
    out = []
    for i, sec in enumerate(_seconds(name)):
        if first + i in asks:
            st.ask(0, asks[first + i])
        c = st.step([sec])[0]
        out.append((c.tokens, c.answer))
    return out


def test_sessions_join_and_leave_without_changing_others_or_compiling(params, tok):  # noqa: F811
    scfg = small(**QA)
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, batch=3)
    st.close(1), st.close(2)
    assert st.free_slots == [1, 2] and st.is_open(0)
    feeds = {n: iter(_seconds(n)) for n in SESSIONS}
    slot_of, got = {"a": 0}, {n: [] for n in SESSIONS}
    with Compiles() as compiles:
        for t in range(8):
            if t == 1:
                after_first = compiles.n
            for n, (first, _, query, prev, *_rest) in SESSIONS.items():
                if t == first and n != "a":
                    slot_of[n] = st.open(query=query, previous_text=prev)
            for n, asks in ((n, s[6]) for n, s in SESSIONS.items()):
                if t in asks:
                    st.ask(slot_of[n], asks[t])
            seconds = [None] * 3
            live = {n: s for n, s in slot_of.items() if SESSIONS[n][0] <= t < SESSIONS[n][1]}
            for n, s in live.items():
                seconds[s] = next(feeds[n])
            out = st.step(seconds)
            for n, s in live.items():
                got[n].append((out[s].tokens, out[s].answer))
                if t + 1 == SESSIONS[n][1] and n != "a":
                    st.close(s)
            if t == 4:  # slot 1 sat free this second: its rows show nothing, though their K/V are stale
                assert (np.asarray(st.cache.order)[1] == -1).all() and out[1] is None
                spare = st.open()
                with pytest.raises(SlotsFull, match="All 3 slots hold a session"):
                    st.open()
                st.close(spare)
    print(f"compiles: {after_first} in the first second, {compiles.n - after_first} after")
    assert after_first > 0 and compiles.n == after_first
    assert [slot_of[n] for n in "abcd"] == [0, 1, 2, 1]
    for n in SESSIONS:
        assert got[n] == _solo(params, tok, n, scfg), f"session {n} differs in the batch and alone"
    assert got["a"][3][1] is not None and got["c"][2][1] is not None  # the questions were answered
    assert len({tuple(t for t, _ in g) for g in got.values()}) == 4  # the sessions really differ
