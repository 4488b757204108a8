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


def _forward_check(params, st, b, c, secs, tok):  # noqa: F811
    """Streamed logits of slot b's last turn vs forward() on the host's retained sequence for that slot."""
    ids, _, _ = st.hosts[b].retained()
    ids = ids.tolist()
    n_vis = [int(np.prod(s.grid_thw[0])) // 4 for s in secs]
    kept, pads = [], ids.count(tok.video_pad)
    for s, n in zip(reversed(secs), reversed(n_vis)):  # the vision blocks retained are the last seconds'
        if pads <= 0:
            break
        kept.insert(0, s)
        pads -= n
    assert pads == 0
    ref = np.asarray(forward(CFG, params, np.asarray([ids]),
                             pixel_values_videos=np.concatenate([s.pixel_values for s in kept]),
                             video_grid_thw=np.concatenate([s.grid_thw for s in kept]),
                             second_per_grid_ts=[s.second_per_grid_ts for s in kept], time_mode="float"))[0]
    capped = len(c.tokens) >= st.scfg.max_new_tokens  # its last token is not cached until the next second
    p = len(ids) - (c.n_tokens - capped)  # the prefill's last token: the turn's first pick reads its logits
    k = c.n_tokens + (not capped)  # one pick per generated token, and the stop's
    d0 = float(np.max(np.abs(st.last_prefill_logits[b] - ref[p - 1])))
    d = float(np.max(np.abs(st.last_logits[b, :k] - ref[p - 1:p - 1 + k])))
    return ids, p, max(d0, d)


@pytest.mark.parametrize("mode,window,at", [("streaming", 4, 1), ("recompute", 1, 2)])
def test_question_mid_stream_answer_logits_match_forward(params, tok, mode, window, at):  # noqa: F811
    """The question enters that second's user turn; the logits of its answer (after the prefix) and of the
    commentary after it equal forward() on the retained sequence; the stream then goes on commentating."""
    scfg = small(vision_window=window, **QA)
    st = Streamer(CFG, params, tok, scfg, sampling=GREEDY, batch=2, mode=mode, keep_logits=True,
                  previous_text=["red ball", None], query=[DEFAULT_QUERY, "goal"])
    secs = [list(synthetic_seconds(CFG, (4, 4), seconds=at + 2, start=10.0 * b, seed=30 + b)) for b in range(2)]
    if mode == "recompute":  # the question comes after evictions: older commentary is in the sequence
        assert at > window
    question, prefix = "what ball", " red"
    for t in range(at + 2):
        if t == at:
            st.ask(1, question, max_new_tokens=2, answer_prefix=prefix)
        out = st.step([secs[0][t], secs[1][t]])
        c = out[1]
        if t == at:
            assert c.question == question and isinstance(c.answer, str) and len(c.answer_tokens) <= 2
            assert out[0].question is None  # the other session never sees it
            ids, p, diff = _forward_check(params, st, 1, c, secs[1][:t + 1], tok)
            print(f"{mode}: answer logits vs forward, max |diff| = {diff:.2e}")
            assert diff <= 1e-4
            sec = secs[1][t]
            rnd = build_round(tok, sec.t0, sec.t1, 4, question=question_text(question, False))
            turn = rnd.prompt + tok.encode(prefix)
            assert ids[p - len(turn):p] == turn  # the question sits in this second's user turn, prefix after
            written, asked_turn, asked = ids[p:], turn, c
            assert written[:len(c.answer_tokens)] == list(c.answer_tokens)
            if len(c.answer_tokens) < len(written):  # the answer ended with "\n" (forced at the 2-token limit)
                assert written[len(c.answer_tokens)] == tok.encode("\n")[0]
                capped = len(c.tokens) >= st.scfg.max_new_tokens  # its last token is cached next second
                assert written[len(c.answer_tokens) + 1:] == list(c.tokens)[:len(c.tokens) - capped]
        else:
            assert c.question is None and c.answer is None and c.answer_tokens == ()
    assert c.index == at + 1 and st.hosts[1].second == at + 2  # commentary went on after the question
    if mode == "recompute":  # the question's second has left the window: retention as for commentary
        ids = st.hosts[1].retained()[0].tolist()
        older_end = ids.index(tok.im_end, ids.index(tok.im_end) + 1)  # system block's, then previous text's
        kept = tok.encode(prefix) + list(asked.answer_tokens)
        assert _contains(ids[:older_end], kept), "the answer did not become older commentary"
        assert not _contains(ids, asked_turn[:-len(tok.encode(prefix))]), "the question outlived its second"


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_session_and_question_errors_are_clear(params, tok):  # noqa: F811
    st = Streamer(CFG, params, tok, small(), batch=2)
    with pytest.raises(ValueError, match="question_tokens is 0 and answer_tokens is 0"):
        st.ask(0, "red ball")
    st = Streamer(CFG, params, tok, small(**QA), batch=2)
    with pytest.raises(ValueError, match="Slot 1 holds a session; close it first"):
        st.open(1)
    with pytest.raises(ValueError, match="slot must be an int in 0..1, got 2"):
        st.close(2)
    st.close(1)
    with pytest.raises(ValueError, match="Slot 1 holds no session; open it before asking"):
        st.ask(1, "red")
    with pytest.raises(ValueError, match="which holds no session"):
        st.step(list(synthetic_seconds(CFG, seconds=2)))
    with pytest.raises(ValueError, match="question_tokens is 12; shorten it"):
        st.ask(0, " ".join(["red"] * 13))
    with pytest.raises(ValueError, match="must fit StreamConfig.answer_tokens 5"):
        st.ask(0, "red", answer_prefix="red ball", max_new_tokens=4)
    with pytest.raises(ValueError, match="query_tokens is 8"):
        st.open(query=" ".join(["ball"] * 9))
    assert st.free_slots == [1]  # a refused open takes no slot
    assert st.open() == 1 and st.free_slots == []


def test_reopened_slot_samples_as_a_fresh_streamer_with_its_id(params, tok):  # noqa: F811
    secs = list(synthetic_seconds(CFG, seconds=2, seed=40))
    st = Streamer(CFG, params, tok, small(), seed=3, batch=2)
    st.step([secs[0], secs[1]])  # the slot's old session leaves cache rows and a sampler behind
    st.close(1)
    assert st.open(stream_id=5) == 1
    got = [st.step([None, s])[1].tokens for s in secs]
    fresh = Streamer(CFG, params, tok, small(), seed=3, stream_ids=[5])
    assert got == [c.tokens for c in fresh.run(secs)] != [c.tokens for c in Streamer(
        CFG, params, tok, small(), seed=3).run(secs)]
