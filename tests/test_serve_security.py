"""The commentary server as an attacker meets it: a real uvicorn on 127.0.0.1, real WebSocket and HTTP clients.

Server-side files and URLs only where the operator allowed them, with one answer for every refusal; one
session's bad time stamps or unplaceable second end that session alone; a connection flood under a small
file-descriptor limit leaves room for a real session; uploads are deleted on every path; transcripts cannot
inject cues; browser origins, X-Forwarded-For and tokens follow their rules; the CLI refuses a port in use
in one line and serves frames the way the checkpoint was trained.
"""
import contextlib
import dataclasses
import functools
import http.client
import http.server
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus

import svlm_jax
from experiments.forward_demo import write_synthetic
from svlm_jax import ModelConfig
from svlm_jax.cache import StreamConfig
from svlm_jax.checkpoint import Preprocessing
from svlm_jax.serve.client import Client, SessionError, encode_jpeg, get, metric
from svlm_jax.serve.config import ServerConfig, frame_settings
from svlm_jax.serve.runner import ThreadedServer
from svlm_jax.serve.sources import REFUSED
from svlm_jax.stream import SamplingConfig, Streamer
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny()
TOKEN = "security-token-0123456789"
WORDS = ["red", "ball", "what", "is", "the"]
# The shapes of tests/test_serve.py, so the step compiled there (or here, once) is reused.
BASE = dict(token=TOKEN, max_sessions=3, fps=2, frame_hw=(56, 56), max_client_fps=1000, batch_wait_s=0.3,
            max_frame_bytes=20_000)
SCFG = StreamConfig(vision_window=2, text_sink=8, text_window=8, max_new_tokens=4,
                    vision_tokens=ServerConfig(**BASE).vision_tokens, question_tokens=16, answer_tokens=6)
STREAM_FLAGS = ["--max-sessions", "3", "--vision-window", "2", "--text-sink", "8", "--text-window", "8",
                "--max-new-tokens", "4", "--question-tokens", "16", "--answer-tokens", "6", "--greedy"]


@pytest.fixture(scope="module")
def model():
    return random_params(CFG), ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))


def streamer(model):
    params, tok = model
    return Streamer(CFG, params, tok, SCFG, sampling=SamplingConfig(greedy=True), batch=3)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The server's --source-root: a clip, a text file and a truncated clip."""
    d = tmp_path_factory.mktemp("media")
    clip = write_synthetic(str(d / "clip.mp4"), 2.5, rate=8)
    (d / "notes.mp4").write_text("not a video, just words\n" * 40)
    data = open(clip, "rb").read()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return d


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A directory outside every root, holding a 'secret' video."""
    d = tmp_path_factory.mktemp("outside")
    write_synthetic(str(d / "secret.mp4"), 1.5, rate=8)
    return d


class _Web(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/public/redir"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/internal/secret.mp4")
            self.end_headers()
            return
        self.path = "/" + self.path.rsplit("/", 1)[-1]  # every path serves a file of the directory
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web(outside):
    """An 'internal' HTTP server on 127.0.0.1 -> its base URL; /public/... is allowed, /internal/... is not."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Web, directory=str(outside)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def server(model, media, web):
    """Files under `media`; URLs under web's /public/ and a name prefix whose host resolves to loopback."""
    port = web.rsplit(":", 1)[1]
    cfg = ServerConfig(**BASE, sessions_per_client=3, source_roots=(str(media),),
                       allow_urls=(f"{web}/public/", f"http://localhost:{port}/named/"),
                       allowed_origins=("http://friend.example",), trusted_proxies=("127.0.0.9",))
    with ThreadedServer(cfg, streamer(model)) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict(model):
    """Defaults for sources, one session per client, small upload limits, 3 wrong tokens a minute, 2 s for the
    start message, and a clock allowance so loose that a second only the model's step can refuse gets through
    the protocol."""
    cfg = ServerConfig(**BASE, sessions_per_client=1, clock_ahead_s=1e30, max_upload_bytes=200_000,
                       uploads_per_client=2, upload_ttl_s=1.0, auth_failures_per_min=3, start_timeout_s=2.0)
    with ThreadedServer(cfg, streamer(model)) as srv:
        yield srv


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint trained (so its preprocessing.json says) at 56*56 pixels, PIL resize, grid picking."""
    root = tmp_path_factory.mktemp("ckpt")
    word_level_tokenizer(WORDS, CFG).save(str(root / "tokenizer.json"))
    pre = Preprocessing(fps=2, min_pixels=56 * 56, max_pixels=56 * 56, frames="grid", resize="pil")
    return str(svlm_jax.save(root / "tiny-demo", CFG, random_params(CFG), files=[root / "tokenizer.json"],
                             preprocessing=pre))


def jpegs(seed, seconds):
    rng = np.random.default_rng(seed)
    return [[encode_jpeg(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
            for _ in range(seconds)]


def send_second(c, frames, i, t=None):
    for k, jpeg in enumerate(frames[i]):
        c.frame((i if t is None else t) + k / 2, jpeg)


def error_of(srv, source=None, send=(), **connect):
    """Open a session that misbehaves -> its one error message (the socket is then closed)."""
    with Client(srv.ws_url, TOKEN, **connect) as bad:
        bad.start(source, wait=False)
        for m in send:
            bad.send_raw(m)
        msgs = []
        with contextlib.suppress(Exception):
            while True:
                msgs.append(bad.recv(timeout=30))
    errors = [m for m in msgs if m["type"] == "error"]
    assert len(errors) == 1, msgs
    return errors[0], bad


def wait_empty(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while os.listdir(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.listdir(path)


# ------------------------------------------------------------------------------------------ 1. sources
def test_server_side_sources_only_where_allowed_and_refusals_reveal_nothing(server, media, outside, web):
    port = web.rsplit(":", 1)[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    os.symlink(outside / "secret.mp4", media / "link.mp4")
    refused = [str(outside / "secret.mp4"),                        # a local file outside every root
               str(media / "link.mp4"),                            # a symlink out of the root
               os.path.relpath(outside / "secret.mp4", media),     # ../ out of the root
               str(media / "missing.mp4"), str(media / "notes.mp4"), str(media / "truncated.mp4"), str(media),
               "/etc/passwd", "/dev/zero",
               f"{web}/internal/secret.mp4",                       # an internal URL under no prefix
               f"{web}/public/redir",                              # a redirect from an allowed URL to it
               f"{web}/public/../internal/secret.mp4",
               f"http://localhost:{port}/named/secret.mp4",        # a name that resolves to loopback
               f"rtsp://127.0.0.1:{closed_port}/live", f"http://127.0.0.1:{closed_port}/public/x.mp4"]
    answers = set()
    for url in refused:
        err, bad = error_of(server, {"kind": "url", "url": url})
        assert err["code"] == "source" and bad.previews == 0, (url, err)
        answers.add(err["message"])
    assert answers == {REFUSED}  # missing, not a video, outside, closed port: one answer, nothing learned
    for url in ("clip.mp4", str(media / "clip.mp4"), f"{web}/public/secret.mp4"):  # allowed: they stream
        with Client(server.ws_url, TOKEN) as c:
            assert c.start({"kind": "url", "url": url})["source"] == "url"
    # An uploaded playlist naming a local file outside the roots is not followed.
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.5,\n{outside / 'secret.mp4'}\n#EXT-X-ENDLIST\n"
    status, body = get(server.url + "/api/upload", TOKEN, data=playlist.encode())
    assert status == 200
    err, bad = error_of(server, {"kind": "upload", "id": json.loads(body)["id"]})
    assert err == {**err, "code": "source", "message": REFUSED} and bad.previews == 0
    assert not wait_empty(server.state.uploads.root)


def test_server_side_sources_are_off_by_default(strict, media):
    assert not ServerConfig(token=TOKEN).server_sources
    err, _ = error_of(strict, {"kind": "url", "url": str(media / "clip.mp4")})
    assert err["code"] == "source" and err["message"] == REFUSED


# ------------------------------------------------------------------------------------------ 2. isolation
def test_bad_time_stamps_end_only_their_session(server):
    good, frames, i = Client(server.ws_url, TOKEN), jpegs(1, 12), 0
    good.start()
    for bad_t in (1e300, 1e9, "same", float("nan")):
        with Client(server.ws_url, TOKEN) as bad:
            bad.start()
            send_second(bad, frames, 0)  # a normal second, stepped with the bystander's
            send_second(good, frames, i)
            bad.until("comment", t0=0.0)
            good.until("comment", t0=float(i))
            i += 1
            bad.frame(0.5 if bad_t == "same" else bad_t, frames[1][0])
            send_second(good, frames, i)
            with pytest.raises(SessionError, match="bad_frame"):
                bad.until("comment")
            good.until("comment", t0=float(i))
            i += 1
    good.stop()
    assert good.until("end")["seconds"] == i
    good.close()
    assert [m["t0"] for m in good.messages if m["type"] == "comment"] == [float(k) for k in range(i)]


def test_a_second_the_model_cannot_place_ends_only_its_session(strict):
    frames = jpegs(2, 4)
    with Client(strict.ws_url, TOKEN) as good, Client(strict.ws_url, TOKEN, source_address=("127.0.0.5", 0)) as bad:
        good.start(), bad.start()
        for i in range(2):
            send_second(bad, frames, i), send_second(good, frames, i)
            bad.until("comment", t0=float(i)), good.until("comment", t0=float(i))
        # t = 1e15 s is a time the protocol lets through here; its header with a question overflows the round.
        bad.ask("what is the red ball what is the red ball what is")
        send_second(bad, frames, 2, t=1e15)
        send_second(good, frames, 2)  # the same step: the engine waits for the producing sessions
        with pytest.raises(SessionError, match="round_tokens"):
            bad.until("comment")
        good.until("comment", t0=2.0)
        send_second(good, frames, 3)
        good.until("comment", t0=3.0)
    text = get(strict.url + "/metrics")[1].decode()
    assert 'svlm_session_errors_total{code="bad_frame"}' in text and 'code="internal"' not in text


# ------------------------------------------------------------------------------------------ 3. flood
FD_LIMIT = 160
# The CLI under a small file-descriptor limit (set in the child itself, not in a fork of this threaded process).
LIMITED = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n})); "
           "sys.argv = ['experiments.serve'] + sys.argv[1:]; runpy.run_module('experiments.serve', run_name='__main__')")


def _open_idle(addr, sources, n):
    """n raw TCP connections from each source address that send nothing (the kernel completes them)."""
    socks = []
    for src in sources:
        for _ in range(n):
            s = socket.socket()
            s.bind((src, 0))
            s.setblocking(False)
            s.connect_ex(addr)
            socks.append(s)
    return socks


def test_a_connection_flood_leaves_room_for_a_real_session(ckpt, tmp_path):
    tok_file = tmp_path / "token"
    tok_file.write_text(TOKEN + "\n")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cmd = [sys.executable, "-c", LIMITED.format(n=FD_LIMIT), "--ckpt", ckpt, "--port", str(port), "--token-file",
           str(tok_file), "--no-warmup", "--connections-per-client", "8", "--handshake-timeout", "1",
           "--start-timeout", "2", "--log-level", "info", *STREAM_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    killer = threading.Timer(600, proc.kill)  # a server that never comes up must not hang the suite
    killer.start()
    socks = []
    try:
        first = proc.stdout.readline()  # the server prints once it accepts connections
        assert first.startswith("svlm-jax serving tiny-demo"), (first, proc.stderr.read() if proc.poll() else "")
        addr, url = ("127.0.0.1", port), f"http://127.0.0.1:{port}"
        health = json.loads(get(url + "/health")[1])
        assert health["ckpt"] == "tiny-demo" and health["frame"] == [56, 56]  # a name, never a path
        cap = metric(get(url + "/metrics")[1].decode(), "svlm_connections_max")
        assert 0 < cap < FD_LIMIT
        # One address floods: it gets its 8 connections, the rest are aborted at once.
        socks += _open_idle(addr, ["127.0.0.2"], 3 * FD_LIMIT)
        with Client(f"ws://127.0.0.1:{port}/ws", TOKEN, open_timeout=10) as c:
            assert c.start()["slot"] == 0
        # Many addresses flood past the global cap: the deadline frees the server, then a session connects.
        socks += _open_idle(addr, [f"127.0.1.{k}" for k in range(1, 41)], 8)
        deadline, ready = time.monotonic() + 20, None
        while ready is None and time.monotonic() < deadline:
            try:
                with Client(f"ws://127.0.0.1:{port}/ws", TOKEN, open_timeout=3) as c:
                    ready = c.start()
            except Exception:  # noqa: BLE001 - refused (reset, 403 or full) while the flood holds the cap
                time.sleep(0.2)
        assert ready is not None and proc.poll() is None
        text = get(url + "/metrics")[1].decode()
        for reason in ("per_client", "total", "handshake_timeout"):
            assert float(re.search(rf'svlm_connections_refused_total{{reason="{reason}"}} (\S+)', text)[1]) > 0
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        killer.cancel()
    assert f"file-descriptor limit {FD_LIMIT}" in err and TOKEN not in err


# ------------------------------------------------------------------------------------------ 4. uploads
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_uploads_are_deleted_on_every_path(strict, media):
    root, url = strict.state.uploads.root, strict.url + "/api/upload"
    clip = (media / "clip.mp4").read_bytes()
    for body in ((media / "notes.mp4").read_bytes(), (media / "truncated.mp4").read_bytes(), os.urandom(5000)):
        status, uid = get(url, TOKEN, data=body)
        err, _ = error_of(strict, {"kind": "upload", "id": json.loads(uid)["id"]})
        assert status == 200 and err["code"] == "source"
        assert not wait_empty(root)  # a failed session's upload is deleted
    assert get(url, TOKEN, data=os.urandom(300_000))[0] == 413 and not os.listdir(root)
    assert get(url, "wrong-token-wrong-token", data=clip)[0] == 401 and not os.listdir(root)
    # Killed mid-upload: the partial file goes, and nothing is logged as a failure.
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "svlm_jax.serve", "")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", strict.port)
        conn.putrequest("POST", "/api/upload")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Length", "150000")
        conn.endheaders()
        conn.send(clip[:20_000])
        time.sleep(0.3)
        conn.sock.close()
        assert not wait_empty(root)
        time.sleep(0.3)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not [r for r in handler.records if r.exc_info or r.levelno >= logging.ERROR], handler.records
    # Two uploads fill this client's count quota; unclaimed, they expire (upload_ttl_s=1).
    ids = [json.loads(get(url, TOKEN, data=clip)[1])["id"] for _ in range(2)]
    status, body = get(url, TOKEN, data=clip)
    assert status == 429 and json.loads(body)["code"] == "upload_quota"
    assert not wait_empty(root)
    err, _ = error_of(strict, {"kind": "upload", "id": ids[0]})
    assert err["code"] == "source"
    assert get(url, TOKEN, data=clip)[0] == 200  # the quota is free again
    assert not wait_empty(root)


# ------------------------------------------------------------------------------------------ 5. transcripts
VTT_TIMING = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} --> \d{2}:\d{2}:\d{2}\.\d{3}$")


def strict_vtt_cues(text):
    """Parse WebVTT strictly (no cue ids, as the server writes none) -> [(timing, [payload lines])]."""
    head, _, body = text.partition("\n\n")
    assert head == "WEBVTT"
    cues = []
    for block in body.rstrip("\n").split("\n\n"):
        lines = block.split("\n")
        assert VTT_TIMING.match(lines[0]), block
        assert lines[1:] and all(ln and "-->" not in ln for ln in lines[1:]), block
        cues.append((lines[0], lines[1:]))
    return cues


def test_a_question_cannot_inject_a_cue(server):
    frames = jpegs(3, 2)
    with Client(server.ws_url, TOKEN) as c:
        sid = c.start()["session"]
        send_second(c, frames, 0)
        c.until("comment", t0=0.0)
        c.ask("hi\n\n0 --> 9\nX <b>")
        send_second(c, frames, 1)
        answer = c.until("answer")
        c.until("comment", t0=1.0)
    status, body = get(f"{server.url}/api/sessions/{sid}/transcript.vtt", TOKEN)
    cues = strict_vtt_cues(body.decode())
    said = [m for m in c.messages if m["type"] == "answer" or (m["type"] == "comment" and m["text"].strip())]
    assert status == 200 and len(cues) == len(said)
    qa = [lines for _, lines in cues if lines[0].startswith("Q: ")]
    assert [lines[0] for lines in qa] == ["Q: hi 0 --&gt; 9 X &lt;b&gt;"] and answer["question"].startswith("hi")


# ------------------------------------------------------------------------------------------ 6. hardening
def test_origins_forwarded_for_and_tokens(server, strict):
    for origin in ("http://evil.example", "null"):
        with pytest.raises(InvalidStatus, match="403"):
            Client(server.ws_url, TOKEN, origin=origin)
    for origin in (server.url, "http://friend.example"):  # the page's own origin, one the operator allowed
        with Client(server.ws_url, TOKEN, origin=origin) as c:
            assert c.start()["type"] == "ready"
    # X-Forwarded-For from a client is not believed: the socket's address holds its one session.
    with Client(strict.ws_url, TOKEN) as a:
        a.start()
        err, _ = error_of(strict, additional_headers={"X-Forwarded-For": "10.1.2.3"})
        assert err["code"] == "client_limit"
    # From a --trust-proxy address it names the client, and only there.
    for source, expect in (("127.0.0.9", "10.9.9.9"), ("127.0.0.10", "127.0.0.10")):
        with Client(server.ws_url, TOKEN, source_address=(source, 0),
                    additional_headers={"X-Forwarded-For": "10.9.9.9"}) as c:
            sid = c.start()["session"]
            assert server.state.registry.live[sid].client == expect
    # Wrong tokens are throttled per address (3 a minute here): then even the right one is refused.
    other = {"source_address": ("127.0.0.7", 0)}
    for _ in range(3):
        with Client(strict.ws_url, "guess-guess-guess-guess", **other) as g, pytest.raises(SessionError, match="auth"):
            g.start()
    with Client(strict.ws_url, TOKEN, **other) as g, pytest.raises(SessionError, match="throttled"):
        g.start()
    conn = http.client.HTTPConnection("127.0.0.1", strict.port, source_address=("127.0.0.7", 0))
    conn.request("GET", "/api/sessions/x/transcript.vtt", headers={"Authorization": f"Bearer {TOKEN}"})
    assert conn.getresponse().status == 429
    with Client(strict.ws_url, TOKEN) as c:  # another address is not affected
        assert c.start()["type"] == "ready"
    with pytest.raises(ValueError, match="at least 16"):
        ServerConfig(token="x" * 15)
    from experiments.serve import _token, parse_args
    generated = _token(parse_args(["--ckpt", "x"]))
    assert len(generated) >= 24 and generated != _token(parse_args(["--ckpt", "x"]))  # >= 144 random bits
    # A token in a URL is neither accepted nor logged (HTTP access lines, WebSocket handshakes).
    loggers, handler = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")], _Records()
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    try:
        status, _ = get(f"{strict.url}/health?token={TOKEN}")
        assert get(f"{strict.url}/api/sessions/x/transcript.vtt?token={TOKEN}")[0] == 401 and status == 200
        with Client(f"{strict.ws_url}?token={TOKEN}", TOKEN) as c:
            assert c.start()["type"] == "ready"
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    lines = [r.getMessage() for r in handler.records]
    assert not any(TOKEN in ln for ln in lines), lines
    assert sum("token=REDACTED" in ln for ln in lines) == 3 and any("WebSocket" in ln for ln in lines), lines
    status, body = get(strict.url + "/favicon.ico")
    assert status == 200 and body.startswith(b"<svg")


def test_a_silent_socket_is_closed_at_the_start_deadline(strict):
    with Client(strict.ws_url, TOKEN) as c:  # opens the WebSocket and sends nothing (start_timeout_s=2)
        with pytest.raises(SessionError, match="No start message within 2 s"):
            c.until("ready", timeout=30)


def test_a_query_over_its_tokens_is_that_clients_error(strict):
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "svlm_jax.serve")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with Client(strict.ws_url, TOKEN) as c:  # 200 characters, one token each: over query_tokens (128)
            with pytest.raises(SessionError, match="query_tokens"):
                c.start(query="1" * strict.cfg.max_question_chars)
        with Client(strict.ws_url, TOKEN) as c:  # the slot went back: the next session gets it
            assert c.start()["type"] == "ready"
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not [r for r in handler.records if r.exc_info or r.levelno >= logging.ERROR], handler.records


def test_a_long_question_is_rejected_and_the_session_goes_on(server):
    frames = jpegs(4, 2)
    with Client(server.ws_url, TOKEN) as c:
        c.start()
        c.ask("what " * 60)  # over max_question_chars
        rejected = c.until("rejected")
        c.ask("what " * 30)  # within the characters, over question_tokens
        assert c.until("rejected")["code"] == rejected["code"] == "question"
        send_second(c, frames, 0)
        assert c.until("comment", t0=0.0)


def test_a_port_in_use_or_out_of_range_is_one_line(ckpt, capsys):
    from experiments.serve import main
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        for port, match in ((held.getsockname()[1], "is in use"), (0, "is not a port"), (70000, "is not a port")):
            assert main(["--ckpt", ckpt, "--port", str(port), "--token", TOKEN, *STREAM_FLAGS]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and match in err, err
    finally:
        held.close()


# ------------------------------------------------------------------------------------------ preprocessing
def test_frames_follow_the_checkpoint_preprocessing(ckpt, media):
    from experiments.serve import build, parse_args
    cfg, st = build(parse_args(["--ckpt", ckpt, "--token", TOKEN, *STREAM_FLAGS]))
    assert (cfg.fps, cfg.frame_hw, cfg.resize, cfg.sampling) == (2, (56, 56), "pil", "grid")
    assert frame_settings(Preprocessing())["frame_hw"] == (476, 644)  # the defaults: a 480x640 frame, rounded
    over, _ = build(parse_args(["--ckpt", ckpt, "--token", TOKEN, "--frame", "112x84", "--resize", "torchvision",
                                *STREAM_FLAGS]))
    assert (over.frame_hw, over.resize, over.sampling) == ((112, 84), "torchvision", "grid")
    cfg = dataclasses.replace(cfg, source_roots=(str(media),), max_client_fps=1000)
    with ThreadedServer(cfg, st, warmup=False) as srv:
        with Client(srv.ws_url, TOKEN) as c:
            assert c.start({"kind": "url", "url": "clip.mp4"})["frame"] == [56, 56]
            previews = []
            while len(previews) < 2:
                m = c.ws.recv(timeout=120)
                if isinstance(m, bytes):
                    previews.append(Image.open(io.BytesIO(m)).size)
            c.until("comment")
        assert previews == [(56, 56)] * 2
