"""The commentary server against a real uvicorn on 127.0.0.1, driven by a WebSocket client, on the tiny model.

Sessions join and leave a running batch and each one's greedy commentary (and answer) equals a solo
`Streamer` run on the same seconds; nothing compiles after the first second; bad clients get one JSON
error each while another session goes on; a burst of seconds is skipped, not queued.
"""
import dataclasses
import json
import os
import socket
import time
import urllib.request

import numpy as np
import pytest

from experiments.forward_demo import write_synthetic
from svlm_jax import ModelConfig
from svlm_jax.cache import StreamConfig
from svlm_jax.serve.client import Client, SessionError, encode_jpeg, get, metric
from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.frames import SecondAssembler, decode_jpeg
from svlm_jax.serve.metrics import Metrics
from svlm_jax.serve.protocol import ProtocolError, pack_frame, parse_frame, parse_text
from svlm_jax.serve.runner import ThreadedServer
from svlm_jax.serve.session import Registry, Session
from svlm_jax.serve.transcript import to_jsonl, to_vtt
from svlm_jax.stream import SamplingConfig, Streamer
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny()
TOKEN = "test-token-0123456789"
SERVER = ServerConfig(token=TOKEN, max_sessions=3, sessions_per_client=3, fps=2, frame_hw=(56, 56),
                      max_client_fps=1000, batch_wait_s=0.3, max_frame_bytes=20_000)
SCFG = StreamConfig(vision_window=2, text_sink=8, text_window=8, max_new_tokens=4,
                    vision_tokens=SERVER.vision_tokens, question_tokens=16, answer_tokens=6)
QUESTION = "what is the red ball"


@pytest.fixture(scope="module")
def model():
    params = random_params(CFG)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(["red", "ball", "what", "is", "the"], CFG))
    return params, tok


def new_streamer(model, batch):
    params, tok = model
    return Streamer(CFG, params, tok, SCFG, sampling=SamplingConfig(greedy=True), batch=batch)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The one directory whose files the module's server may stream (--source-root)."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def server(model, media):
    cfg = dataclasses.replace(SERVER, source_roots=(str(media),))
    with ThreadedServer(cfg, new_streamer(model, SERVER.max_sessions)) as srv:
        yield srv


def frames_of(seed, seconds):
    """JPEG frames of random pixels: [second][k] for k < fps, 48x64 (the server resizes them to 56x56)."""
    rng = np.random.default_rng(seed)
    return [[encode_jpeg(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(SERVER.fps)]
            for _ in range(seconds)]


def send_second(client, jpegs, i):
    for k, jpeg in enumerate(jpegs[i]):
        client.frame(i + k / SERVER.fps, jpeg)


def solo(model, jpegs, asks=None):
    """The greedy commentary of the session alone: a fresh Streamer of the server's shape (so nothing new
    compiles) with one slot open, on the same seconds -> [(text, tokens, answer)]."""
    st, asm, out = new_streamer(model, SERVER.max_sessions), SecondAssembler(SERVER.fps), []
    for b in range(1, SERVER.max_sessions):
        st.close(b)
    for i, second in enumerate(jpegs):
        secs = [s for k, jpeg in enumerate(second)
                for s in asm.add(i + k / SERVER.fps, decode_jpeg(jpeg, SERVER.frame_hw))]
        assert len(secs) == 1
        if asks and i in asks:
            st.ask(0, asks[i])
        c = st.step(secs + [None] * (SERVER.max_sessions - 1))[0]
        out.append((c.text, c.n_tokens, c.answer))
    return out


def served(client):
    """[(text, tokens, answer)] per second from a client's messages."""
    answers = {m["t0"]: m["text"] for m in client.messages if m["type"] == "answer"}
    return [(m["text"], m["tokens"], answers.get(m["t0"])) for m in client.messages if m["type"] == "comment"]


def compiles(srv):
    return metric(get(srv.url + "/metrics")[1].decode(), "svlm_jit_compiles")


def test_sessions_join_and_leave_and_match_their_solo_runs(server, model):
    # round -> who sends which second. A runs throughout and asks at second 3; B and C leave; D reuses a slot.
    plan = {"A": (0, 8), "B": (2, 3), "C": (3, 3), "D": (6, 2)}
    jpegs = {name: frames_of(seed, n) for seed, (name, (_, n)) in enumerate(plan.items())}
    clients, first = {}, None
    for r in range(8):
        for name, (join, n) in plan.items():
            if r == join:
                clients[name] = Client(server.ws_url, TOKEN)
                clients[name].start()
            if join <= r < join + n:
                if name == "A" and r == 3:
                    clients[name].ask(QUESTION)
                send_second(clients[name], jpegs[name], r - join)
        for name, (join, n) in plan.items():
            if join <= r < join + n:
                clients[name].until("comment", t0=float(r - join))
                if r == join + n - 1:
                    clients[name].stop()
                    assert clients[name].until("end")["seconds"] == n
        if r == 0:
            first = compiles(server)
        if r == 3:  # A, B and C hold all three slots: a fourth session is refused, the others go on
            with Client(server.ws_url, TOKEN) as extra, pytest.raises(SessionError, match="full"):
                extra.start()
    assert clients["D"].ready["slot"] == clients["B"].ready["slot"]  # a slot freed by B, reused
    assert compiles(server) == first, "a session joining, leaving or asking recompiled the step"
    for name, (join, n) in plan.items():
        clients[name].close()
        ref = solo(model, jpegs[name], {3: QUESTION} if name == "A" else None)
        assert served(clients[name]) == ref, name
    answers = [m for m in clients["A"].messages if m["type"] == "answer"]
    assert [(a["t0"], a["question"]) for a in answers] == [(3.0, QUESTION)]
    assert [m["t0"] for m in clients["A"].messages if m["type"] == "comment"] == [float(i) for i in range(8)]


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def expect_error(server, code, *, start=True, source=None, send=None, token=TOKEN):
    """Open a session that misbehaves; returns its one error message (the socket is then closed)."""
    with Client(server.ws_url, token) as bad:
        if start:
            bad.start(source, wait=False)
        for m in send or []:
            bad.send_raw(m)
        msgs = []
        while True:
            try:
                msgs.append(bad.recv(timeout=30))
            except Exception:  # closed by the server
                break
    errors = [m for m in msgs if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code, msgs
    assert bad.ws.close_code not in (None, 1000), bad.ws.close_code
    return errors[0]


def test_bad_clients_get_one_error_and_another_session_goes_on(server, model, media):
    jpegs = frames_of(10, 12)  # one second before the bad clients, one after each, one at the end
    good = Client(server.ws_url, TOKEN)
    good.start()
    i = 0

    def good_second():
        nonlocal i
        send_second(good, jpegs, i)
        good.until("comment", t0=float(i))
        i += 1

    good_second()
    port = closed_port()
    cases = [
        ("auth", dict(token="wrong-token")),
        ("frame_too_large", dict(send=[pack_frame(0.0, b"\xff" * (SERVER.max_frame_bytes + 100))])),
        ("bad_frame", dict(send=[pack_frame(0.0, b"garbage, not a JPEG at all")])),
        ("bad_frame", dict(send=[b"\x01\x02"])),
        ("source", dict(source={"kind": "url", "url": f"rtsp://127.0.0.1:{port}/live"})),
        ("source", dict(source={"kind": "url", "url": str(media / "missing.mp4")})),
        ("source", dict(source={"kind": "upload", "id": "0123abcd"})),
        ("protocol", dict(send=["{not json"])),
        ("protocol", dict(start=False, send=[pack_frame(0.0, jpegs[0][0])])),
        ("question", dict(send=[json.dumps({"type": "start", "token": TOKEN, "source": {"kind": "camera"},
                                            "query": "x" * (SERVER.max_question_chars + 1)})], start=False)),
    ]
    for code, kw in cases:
        err = expect_error(server, code, **kw)
        assert err["message"] and err["hint"]
        good_second()
    # A session that said something and then sent garbage keeps its transcript.
    with Client(server.ws_url, TOKEN) as g:
        sid = g.start()["session"]
        send_second(g, frames_of(11, 1), 0)
        g.until("comment", t0=0.0)
        g.send_raw(pack_frame(1.0, b"\x00" * 100))
        with pytest.raises(SessionError, match="bad_frame"):
            g.until("comment")
    good_second()
    status, body = get(f"{server.url}/api/sessions/{sid}/transcript.jsonl", TOKEN)
    assert status == 200 and [json.loads(x)["t0"] for x in body.decode().splitlines()] == [0.0]
    assert get(f"{server.url}/api/sessions/{sid}/transcript.vtt", "wrong")[0] == 401
    assert json.loads(get(server.url + "/health")[1])["status"] == "ok"
    good.stop()
    assert good.until("end")["seconds"] == i == len(jpegs)
    good.close()
    assert served(good) == solo(model, jpegs)
    text = get(server.url + "/metrics")[1].decode()
    assert 'svlm_session_errors_total{code="auth"} 1.0' in text


def test_a_burst_is_skipped_not_queued(server):
    n = 40
    jpegs = frames_of(20, n)
    with Client(server.ws_url, TOKEN) as c:
        c.start()
        for i in range(n):  # 40 seconds of video at once: far faster than the step
            send_second(c, jpegs, i)
        c.stop()
        end = c.until("end")
    t0s = [m["t0"] for m in c.messages if m["type"] == "comment"]
    skipped = [m for m in c.messages if m["type"] == "skipped"]
    assert end["skipped"] > 0 and end["seconds"] + end["skipped"] == n
    assert len(t0s) == end["seconds"] and len(skipped) == end["skipped"]
    assert t0s == sorted(t0s) and not set(t0s) & {m["t0"] for m in skipped}
    assert t0s[-1] == n - 1  # the newest second is never the one dropped


def test_file_url_and_upload_sources(server, media):
    video = write_synthetic(str(media / "clip.mp4"), 2.5, rate=8)
    req = urllib.request.Request(server.url + "/api/upload", data=open(video, "rb").read(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req) as r:
        status, body = r.status, r.read()
    uid = json.loads(body)["id"]
    assert status == 200
    with Client(server.ws_url, TOKEN) as f, Client(server.ws_url, TOKEN) as u:
        f.start({"kind": "url", "url": video})
        u.start({"kind": "upload", "id": uid})
        ends = [f.until("end"), u.until("end")]
    for c, end in zip((f, u), ends):
        # Paced to real time: three seconds (2.5 s, the original's frame picking ends with a full second). A
        # step slower than a second on a busy machine may skip one; then it is counted.
        comments = {m["t0"]: m for m in c.messages if m["type"] == "comment"}
        skipped = {m["t0"] for m in c.messages if m["type"] == "skipped"}
        assert set(comments) | skipped == {0.0, 1.0, 2.0}, c.messages
        assert end["seconds"] == len(comments) and end["skipped"] == len(skipped) and c.previews == 3
        assert not comments[1.0 if 1.0 in comments else 0.0]["partial"]
    if not any(m["type"] == "skipped" for m in f.messages + u.messages):  # then they saw the same seconds
        assert [m["text"] for m in f.messages if m["type"] == "comment"] == \
            [m["text"] for m in u.messages if m["type"] == "comment"]
    deadline = time.monotonic() + 30  # the upload is deleted as the session's handler finishes, just after "end"
    while os.listdir(server.state.uploads.root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.listdir(server.state.uploads.root)


# ------------------------------------------------------------------------------------------ units
def test_assembler_buckets_pads_and_refuses_time_going_back():
    a, f = SecondAssembler(2), [np.full((56, 56, 3), v, np.uint8) for v in range(5)]
    assert a.add(0.1, f[0]) == [] and a.add(0.2, f[1]) == []  # same bucket: the later frame wins
    (s0,) = a.add(0.7, f[2])
    assert s0.t0 == 0.0 and [int(x[0, 0, 0]) for x in s0.frames] == [1, 2]
    assert a.add(1.2, f[3]) == []
    (s1,) = a.add(3.0, f[4])  # a jump: second 1 is completed with its one frame repeated
    assert s1.t0 == 1.0 and [int(x[0, 0, 0]) for x in s1.frames] == [3, 3]
    with pytest.raises(ProtocolError, match="must not decrease"):
        a.add(2.0, f[0])
    s3 = a.flush()
    assert s3.t0 == 3.0 and s3.partial and s3.num_real == 1


def test_protocol_parsing():
    kw = dict(max_bytes=1000, max_question_chars=10)
    assert parse_text('{"type":"ask","text":" hi "}', **kw).text == "hi"
    assert parse_text('{"type":"ask","text":"' + "a" * 20 + '"}', **kw).text == "a" * 20  # the session rejects it
    for raw, code in [('{"type":"start","source":{"kind":"camera"}}', "auth"),
                      ('{"type":"start","token":"x","source":{"kind":"tv"}}', "protocol"),
                      ('{"type":"start","token":"x","source":{"kind":"url"}}', "protocol"),
                      ('{"type":"ask","text":3}', "protocol"), ('[1]', "protocol"), ('{"type":"dance"}', "protocol"),
                      ('{"type":"ask","text":"' + "a" * 2000 + '"}', "message_too_large")]:
        with pytest.raises(ProtocolError) as e:
            parse_text(raw, **kw)
        assert e.value.code == code, raw
    assert parse_frame(pack_frame(1.5, b"jpeg"), max_bytes=10) == (1.5, b"jpeg")
    for data in (pack_frame(float("nan"), b"j"), pack_frame(-1.0, b"j"), pack_frame(0.0, b""),
                 pack_frame(1e300, b"j"), pack_frame(1.5, b"j")):
        with pytest.raises(ProtocolError):
            parse_frame(data, max_bytes=10, after=1.5, latest=100.0)


def test_transcript_formats():
    entries = [{"type": "comment", "t0": 0.0, "t1": 1.0, "text": "a red ball"},
               {"type": "comment", "t0": 1.0, "t1": 2.0, "text": ""},
               {"type": "answer", "t0": 3661.0, "t1": 3662.0, "question": "what?", "text": "a ball"}]
    assert to_vtt(entries) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na red ball\n\n"
                               "01:01:01.000 --> 01:01:02.000\nQ: what?\nA: a ball\n\n")
    assert [json.loads(x) for x in to_jsonl(entries).splitlines()] == entries


def test_registry_limits_sessions_per_client():
    import asyncio
    cfg = ServerConfig(token=TOKEN, max_sessions=3, sessions_per_client=2)
    reg, loop = Registry(cfg, Metrics(3)), asyncio.new_event_loop()
    mk = lambda client: Session(client, {"kind": "camera"}, None, loop, 8)  # noqa: E731
    a, b = mk("10.0.0.1"), mk("10.0.0.1")
    reg.admit(a), reg.admit(b)
    with pytest.raises(ProtocolError, match="already has 2"):
        reg.admit(mk("10.0.0.1"))
    reg.admit(mk("10.0.0.2"))
    with pytest.raises(ProtocolError, match="full"):
        reg.admit(mk("10.0.0.3"))
    reg.finish(a)
    assert reg.get(a.id) is a and a.id not in reg.live
    loop.close()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from experiments.serve import main
    empty = tmp_path / "token"
    empty.write_text("\n")
    for argv, match in [(["--ckpt", str(tmp_path / "nope")], "does not exist"),
                        (["--ckpt", str(tmp_path), "--frame", "100x100"], "multiples of 28"),
                        (["--ckpt", str(tmp_path), "--frame", "big"], "is not HxW"),
                        (["--ckpt", str(tmp_path), "--token", "short-token"], "at least 16 characters"),
                        (["--ckpt", str(tmp_path), "--port", "99999"], "--port 99999"),
                        (["--ckpt", str(tmp_path), "--source-root", str(tmp_path / "nope")], "--source-root"),
                        (["--ckpt", str(tmp_path), "--allow-url", "ftp://x/"], "--allow-url 'ftp://x/'"),
                        (["--ckpt", str(tmp_path), "--token-file", str(empty)], "holds no token")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m experiments.serve: error:") and match in err, err
