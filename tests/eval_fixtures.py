"""Shared fixtures of the commentary-evaluation tests: a synthetic Inf-Streams-Eval directory in the released
layout (short PyAV games, word-timestamped ground truth) and a tiny checkpoint with a word-level tokenizer."""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np

import svlm_jax
from svlm_jax import ModelConfig
from svlm_jax.tokenizer import word_level_tokenizer
from svlm_jax.video import write_mp4
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny()
WORDS = ["Curry", "shoots", "three", "Good", "evening", "pass", "goal", "saved", "Welcome", "over", "night",
         "what", "a", "play", "the", "ball", "A", "B", "Commentary", "is", "better", "aligned", "with", "human",
         "commentary"]

# Two games. g1 has a word whose start is after its end (ws > we), as the released files do.
GAMES = {
    "NBA/g1.mp4": [[0.2, 0.6, "Good"], [0.7, 1.1, "evening"], [1.9, 1.5, "Curry"], [2.2, 2.8, "shoots"],
                   [3.1, 3.6, "three"], [4.2, 4.9, "what"], [5.5, 5.9, "a"], [6.1, 6.8, "play."]],
    "NHL/g2.mp4": [[0.1, 0.5, "Welcome"], [1.2, 2.6, "pass"], [3.4, 3.9, "goal"], [4.6, 5.3, "saved."]],
}


@functools.lru_cache(maxsize=None)
def checkpoint() -> str:
    """One tiny random checkpoint (with tokenizer.json) shared by every eval test of the session (building
    it compiles init_params, which is most of its cost); removed at exit."""
    root = tempfile.mkdtemp(prefix="svlm_eval_ckpt_")
    atexit.register(shutil.rmtree, root, True)
    return write_checkpoint(root)


def write_checkpoint(root) -> str:
    """A tiny random checkpoint (with tokenizer.json) under root/ckpt."""
    tok = os.path.join(root, "tokenizer.json")
    word_level_tokenizer(WORDS, CFG).save(tok)
    params = random_params(CFG)
    return str(svlm_jax.save(os.path.join(root, "ckpt"), CFG, params, files=[tok]))


def write_dataset(root, games=GAMES, *, seconds: float = 8.0) -> str:
    """root/data: eval_all_metadata.jsonl plus one 56x56 8-fps video per game (content varies per frame)."""
    data = os.path.join(root, "data")
    rng = np.random.default_rng(0)
    with open(os.path.join(data if os.makedirs(data, exist_ok=True) is None else data, "eval_all_metadata.jsonl"),
              "w") as f:
        for video, content in games.items():
            os.makedirs(os.path.join(data, os.path.dirname(video)), exist_ok=True)
            frames = [np.full((56, 56, 3), rng.integers(0, 255, 3), np.uint8) for _ in range(int(seconds * 8))]
            write_mp4(os.path.join(data, video), frames, 8)
            f.write(json.dumps({"video": video, "content": content}) + "\n")
    return data


# ---------------------------------------------------------------------------- a local chat-completions server
import http.server  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def _between(text: str, a: str, b: str) -> str:
    m = re.search(re.escape(a) + r"(.*?)" + re.escape(b), text, re.S)
    return m.group(1) if m else ""


def rule_reply(messages: list[dict]) -> str:
    """The fixed rule of the test judge: the longer candidate wins (Inf-Streams: "A"/"B"; LiveSports: its
    sentence); equal lengths give "A" for Inf-Streams and an undecided sentence (a tie) for LiveSports."""
    user = messages[-1]["content"]
    if isinstance(user, list):
        user = "".join(p.get("text", "") for p in user)
    if "---Commentary A---" in user:
        a = _between(user, "---Commentary A---\n", "\n----------")
        b = _between(user, "---Commentary B---\n", "\n----------")
        if len(a) == len(b):
            return "Both are equally aligned."
        return f"Commentary {'A' if len(a) > len(b) else 'B'} is better aligned with the human commentary"
    a = _between(user, "Candidate A:\n", "\n\nCandidate B:\n")
    b = _between(user, "Candidate B:\n", "\n\n")
    return "a" if len(a) >= len(b) else " B"  # case and spaces exercise the parser


class ChatServer:
    """A real HTTP server on 127.0.0.1 speaking POST /v1/chat/completions, answering by `rule_reply`.

    Failure injection by a marker word in the user message: FAIL500 -> HTTP 500, GARBAGE -> a 200 whose body
    is not JSON, SLOW -> sleeps `slow_s` before answering. `requests` lists every parsed request body;
    `healed` turns the markers off.
    """

    def __init__(self, slow_s: float = 3.0):
        self.requests: list[dict] = []
        self.healed = False
        self.slow_s = slow_s
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                user = body["messages"][-1]["content"]
                user = user if isinstance(user, str) else json.dumps(user)
                if body["model"] == "no-temperature" and "temperature" in body:
                    return self._send(400, b'{"error": {"message": "temperature is not supported"}}')
                if not server.healed and "FAIL500" in user:
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if not server.healed and "GARBAGE" in user:
                    return self._send(200, b"<html>not json at all")
                if not server.healed and "SLOW" in user:
                    time.sleep(server.slow_s)
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": rule_reply(body["messages"])}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, data):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
