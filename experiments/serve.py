"""Serve live commentary to browsers and WebSocket clients: many sessions in one batched step.

    python -m experiments.serve --ckpt DIR [--port 8000] [--max-sessions 4] [--token-file FILE] [options]

Prints the page's URL (with a generated token in its fragment); open it, press Start, and the camera is
commentated live. Sessions may also stream an uploaded file, and, where the operator allows it, a file
under a --source-root or a URL under an --allow-url prefix. Frames are made as the checkpoint was trained
(its preprocessing.json), unless --fps, --frame, --resize or --frames say otherwise. Protocol, endpoints and
threat model: docs/SERVING.md. Bad input (a port in use included) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import socket
import sys

from svlm_jax.cache import StreamConfig
from svlm_jax.serve.config import ServerConfig
from svlm_jax.stream import SamplingConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's flags; defaults are ServerConfig's, StreamConfig's, the checkpoint's preprocessing and sampling."""
    d, sc = StreamConfig(), ServerConfig(token="x" * 16)
    ap = argparse.ArgumentParser(prog="python -m experiments.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (svlm_jax.save / converters.hf_to_jax)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; 0.0.0.0 exposes it)")
    ap.add_argument("--port", type=int, default=8000, help="port, 1-65535 (8000)")
    tok = ap.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None, help="the clients' secret, >= 16 characters (default: generated); "
                                                   "visible to local users in the process list, so prefer --token-file")
    tok.add_argument("--token-file", default=None, help="read the clients' secret from this file's first line")
    ap.add_argument("--max-sessions", type=int, default=sc.max_sessions, help="slots of the batched step (4)")
    ap.add_argument("--sessions-per-client", type=int, default=sc.sessions_per_client,
                    help="sessions one address may hold (2)")
    ap.add_argument("--fps", type=int, default=None, help="frames per second fed to the model (the checkpoint's)")
    ap.add_argument("--frame", default=None, help="HxW every frame is resized to, multiples of 28 (default: what the "
                                                  "checkpoint's pixel budget makes of a 480x640 camera frame)")
    ap.add_argument("--resize", choices=("torchvision", "pil"), default=None, help="frame resize (the checkpoint's)")
    ap.add_argument("--frames", choices=("original", "grid"), default=None,
                    help="frame picking of server-side sources (the checkpoint's)")
    ap.add_argument("--batch-wait", type=float, default=sc.batch_wait_s,
                    help="seconds a step waits for other sessions' seconds (0.5)")
    ap.add_argument("--max-frame-kib", type=int, default=sc.max_frame_bytes >> 10, help="largest JPEG frame (2048)")
    ap.add_argument("--max-client-fps", type=float, default=sc.max_client_fps,
                    help="frames per second a session may send (16)")
    ap.add_argument("--max-question-chars", type=int, default=sc.max_question_chars, help="(200)")
    g = ap.add_argument_group("server-side sources (none by default: camera and uploads only)")
    g.add_argument("--source-root", action="append", default=[], metavar="DIR",
                   help="a directory whose video files sessions may stream (repeatable)")
    g.add_argument("--allow-url", action="append", default=[], metavar="PREFIX",
                   help="a URL prefix (http, https, rtsp, rtmp) sessions may stream, e.g. rtsp://cam.example/live/; "
                        "loopback and private addresses only when the prefix names the address (repeatable)")
    g = ap.add_argument_group("uploads")
    g.add_argument("--max-upload-mib", type=int, default=sc.max_upload_bytes >> 20, help="largest upload (512)")
    g.add_argument("--uploads-per-client", type=int, default=sc.uploads_per_client, help="(2)")
    g.add_argument("--upload-client-mib", type=int, default=sc.upload_client_bytes >> 20,
                   help="bytes of uploads one address may hold (1024)")
    g.add_argument("--max-uploads", type=int, default=sc.max_uploads, help="uploads held at once (16)")
    g.add_argument("--upload-total-mib", type=int, default=sc.upload_total_bytes >> 20,
                   help="bytes of uploads held at once (4096)")
    g.add_argument("--upload-ttl", type=float, default=sc.upload_ttl_s,
                   help="seconds an upload waits for its session before it is deleted (300)")
    g = ap.add_argument_group("connections and clients")
    g.add_argument("--max-connections", type=int, default=None,
                   help="open connections at once (default: what the file-descriptor limit leaves)")
    g.add_argument("--connections-per-client", type=int, default=sc.connections_per_client,
                   help="open connections one address may hold (16)")
    g.add_argument("--handshake-timeout", type=float, default=sc.handshake_timeout_s,
                   help="seconds a connection has to send its request (5)")
    g.add_argument("--start-timeout", type=float, default=sc.start_timeout_s,
                   help="seconds a WebSocket has to send its start message (10)")
    g.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another browser origin (scheme://host[:port]) whose pages may open sessions (repeatable)")
    g.add_argument("--trust-proxy", action="append", default=[], metavar="ADDR",
                   help="a reverse proxy's address whose X-Forwarded-For names the client (repeatable)")
    ap.add_argument("--vision-window", type=int, default=d.vision_window, help="seconds of vision kept (16)")
    ap.add_argument("--text-sink", type=int, default=d.text_sink, help="first tokens of older text kept (512)")
    ap.add_argument("--text-window", type=int, default=d.text_window, help="last tokens of older text kept (512)")
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per second, at most (20)")
    ap.add_argument("--question-tokens", type=int, default=48, help="room for a viewer's question, in tokens (48)")
    ap.add_argument("--answer-tokens", type=int, default=32, help="tokens of an answer, at most (32)")
    ap.add_argument("--temperature", type=float, default=None, help=f"({SamplingConfig().temperature})")
    ap.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (0)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="(default: as stored)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="start at once and compile the step on the first second (sessions skip seconds meanwhile)")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return ap.parse_args(argv)


def _token(a: argparse.Namespace) -> str:
    """The clients' secret: --token-file's, --token's, or a generated one."""
    from svlm_jax.errors import ConfigError, need_file

    if a.token_file is not None:
        need_file(a.token_file, "--token-file", "a file whose first line is the token")
        with open(a.token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ConfigError(f"--token-file {a.token_file!r} holds no token on its first line; write one there.")
        return token
    if a.token is not None:
        return a.token
    return secrets.token_urlsafe(18)  # 144 random bits


def build(a: argparse.Namespace):
    """Load the checkpoint and make (ServerConfig, Streamer) from the flags; bad input raises the domain's
    SvlmError (ConfigError for flags, CheckpointError for --ckpt)."""
    import svlm_jax
    from svlm_jax.checkpoint import load_config, load_preprocessing
    from svlm_jax.errors import CheckpointError, ConfigError, need_dir, user_input
    from svlm_jax.serve.config import frame_settings
    from svlm_jax.serve.sources import parse_prefix
    from svlm_jax.stream import Streamer, stop_ids_for
    from svlm_jax.tokenizer import ChatTokenizer

    frame_hw = None
    if a.frame is not None:
        try:
            frame_hw = tuple(int(x) for x in a.frame.lower().split("x"))
            assert len(frame_hw) == 2
        except (ValueError, AssertionError):
            raise ConfigError(f"--frame {a.frame!r} is not HxW in pixels, e.g. 336x448.") from None
    for root in a.source_root:
        need_dir(root, "--source-root", "a directory of videos sessions may stream")
    with user_input(ConfigError):
        for prefix in a.allow_url:
            parse_prefix(prefix)
    token = _token(a)
    overrides = {"fps": a.fps, "frame_hw": frame_hw, "resize": a.resize, "sampling": a.frames}
    overrides = {k: v for k, v in overrides.items() if v is not None}

    def server_config(frames: dict) -> ServerConfig:
        return ServerConfig(
            token=token, max_sessions=a.max_sessions, sessions_per_client=a.sessions_per_client, **frames,
            batch_wait_s=a.batch_wait, max_frame_bytes=a.max_frame_kib << 10, max_client_fps=a.max_client_fps,
            max_question_chars=a.max_question_chars, source_roots=tuple(a.source_root),
            allow_urls=tuple(a.allow_url), max_upload_bytes=a.max_upload_mib << 20,
            uploads_per_client=a.uploads_per_client, upload_client_bytes=a.upload_client_mib << 20,
            max_uploads=a.max_uploads, upload_total_bytes=a.upload_total_mib << 20, upload_ttl_s=a.upload_ttl,
            max_connections=a.max_connections, connections_per_client=a.connections_per_client,
            handshake_timeout_s=a.handshake_timeout, start_timeout_s=a.start_timeout,
            allowed_origins=tuple(a.allow_origin), trusted_proxies=tuple(a.trust_proxy))

    with user_input(ConfigError):  # the config dataclasses name the bad flag's field
        server_config(overrides)  # the flags alone, checked before the checkpoint is read
    load_config(a.ckpt)  # a missing or damaged checkpoint is named before its other files are read
    # Frames as the checkpoint was trained on, unless a flag says otherwise.
    frames = {**frame_settings(load_preprocessing(a.ckpt)), **overrides}
    with user_input(ConfigError):
        cfg = server_config(frames)
        scfg = StreamConfig(vision_window=a.vision_window, text_sink=a.text_sink, text_window=a.text_window,
                            max_new_tokens=a.max_new_tokens, vision_tokens=cfg.vision_tokens,
                            question_tokens=a.question_tokens, answer_tokens=a.answer_tokens)
    with user_input(CheckpointError):  # a generation_config.json, tokenizer or weights that do not fit
        sampling = SamplingConfig.from_generation_config(a.ckpt, temperature=a.temperature or None,
                                                         greedy=a.greedy or a.temperature == 0)
        tok = ChatTokenizer.from_dir(a.ckpt)
        model_cfg, params = svlm_jax.load(a.ckpt, a.dtype)
    with user_input(ConfigError):  # a cache too small for the prompt, stop ids outside the vocabulary
        st = Streamer(model_cfg, params, tok, scfg, sampling=sampling, batch=cfg.max_sessions, seed=a.seed,
                      stop_ids=stop_ids_for(tok, a.ckpt))
    return cfg, st


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; a port out of range or in use raises ConfigError."""
    from svlm_jax.errors import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port; pass a number from 1 to 65535.")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, socket.gaierror) as e:
        raise ConfigError(f"--host {host!r} cannot be bound ({e}); pass an address of this machine.") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port} on {host} is in use; choose another port or stop the program that "
                              f"holds it.") from None
        raise ConfigError(f"Cannot listen on {host}:{port} ({e.strerror}); pass another --host or --port.") from None
    sock.listen(2048)  # from now on connections wait in the kernel's queue until uvicorn serves them
    return sock


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (2 for bad input, 130 when stopped by Ctrl-C while loading)."""
    from svlm_jax.errors import cli_main

    a = parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli_main(lambda: _serve(a), "python -m experiments.serve")


def _serve(a: argparse.Namespace) -> int:
    from svlm_jax.errors import ConfigError, user_input

    if not 1 <= a.port <= 65535:
        raise ConfigError(f"--port {a.port} is not a port; pass a number from 1 to 65535.")
    cfg, st = build(a)
    generated = a.token is None and a.token_file is None
    sock = bind(a.host, a.port)  # before compiling: a port in use is one line, not uvicorn's log and exit 3
    try:
        import uvicorn

        from svlm_jax.serve.app import create_app
        from svlm_jax.serve.runner import uvicorn_config

        host = f"[{a.host}]" if ":" in a.host else a.host
        port = sock.getsockname()[1]

        def ready() -> None:
            url = f"http://{host}:{port}/" + (f"#token={cfg.token}" if generated else "")
            print(f"svlm-jax serving {os.path.basename(os.path.normpath(a.ckpt))}: {cfg.max_sessions} sessions, "
                  f"{cfg.fps} FPS at {cfg.frame_hw[0]}x{cfg.frame_hw[1]}\n  open  {url}" +
                  ("" if generated else "  (enter your token on the page)") +
                  (f"\n  token {cfg.token}" if generated else ""), flush=True)

        if not a.no_warmup:
            print("compiling the step (once, before the first session)...", file=sys.stderr, flush=True)
        # /health is served without a token: the checkpoint's name only, never its path.
        app = create_app(cfg, st, info={"ckpt": os.path.basename(os.path.normpath(a.ckpt))},
                         warmup=not a.no_warmup, on_ready=ready)
        with user_input(ConfigError):  # a file-descriptor limit too low for the sessions
            config = uvicorn_config(app, log_level=a.log_level)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            return 130
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
