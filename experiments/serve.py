"""Serve live commentary to browsers and WebSocket clients: many sessions in one batched step.

    python -m experiments.serve --ckpt DIR [--port 8000] [--max-sessions 4] [--token TOKEN] [options]

Prints the page's URL with the token in its fragment; open it, press Start, and the camera is commentated
live. Sessions may also stream a server-side file, URL or RTSP source, or an uploaded file. Protocol and
endpoints: docs/SERVING.md. Bad input is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import sys

from svlm_jax.cache import StreamConfig
from svlm_jax.serve.config import ServerConfig
from svlm_jax.stream import SamplingConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's flags; defaults are ServerConfig's, StreamConfig's and the checkpoint's sampling."""
    d, sc = StreamConfig(), ServerConfig(token="x" * 8)
    ap = argparse.ArgumentParser(prog="python -m experiments.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (svlm_jax.save / converters.hf_to_jax)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; 0.0.0.0 exposes it)")
    ap.add_argument("--port", type=int, default=8000, help="port (8000)")
    ap.add_argument("--token", default=None, help="the clients' secret (default: generated and printed)")
    ap.add_argument("--max-sessions", type=int, default=sc.max_sessions, help="slots of the batched step (4)")
    ap.add_argument("--sessions-per-client", type=int, default=sc.sessions_per_client,
                    help="sessions one address may hold (2)")
    ap.add_argument("--fps", type=int, default=sc.fps, help="frames per second fed to the model (2)")
    ap.add_argument("--frame", default="x".join(map(str, sc.frame_hw)),
                    help="HxW every frame is resized to, multiples of 28 (336x448)")
    ap.add_argument("--batch-wait", type=float, default=sc.batch_wait_s,
                    help="seconds a step waits for other sessions' seconds (0.5)")
    ap.add_argument("--max-frame-kib", type=int, default=sc.max_frame_bytes >> 10, help="largest JPEG frame (2048)")
    ap.add_argument("--max-client-fps", type=float, default=sc.max_client_fps,
                    help="frames per second a session may send (16)")
    ap.add_argument("--max-question-chars", type=int, default=sc.max_question_chars, help="(200)")
    ap.add_argument("--max-upload-mib", type=int, default=sc.max_upload_bytes >> 20, help="largest upload (512)")
    ap.add_argument("--no-server-sources", action="store_true",
                    help="refuse server-side files and URLs (camera and uploads only)")
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
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return ap.parse_args(argv)


def build(a: argparse.Namespace):
    """Load the checkpoint and make (ServerConfig, Streamer) from the flags; bad input raises the domain's
    SvlmError (ConfigError for flags, CheckpointError for --ckpt)."""
    import svlm_jax
    from svlm_jax.checkpoint import load_config
    from svlm_jax.errors import CheckpointError, ConfigError, user_input
    from svlm_jax.stream import Streamer, stop_ids_for
    from svlm_jax.tokenizer import ChatTokenizer

    try:
        frame_hw = tuple(int(x) for x in a.frame.lower().split("x"))
        assert len(frame_hw) == 2
    except (ValueError, AssertionError):
        raise ConfigError(f"--frame {a.frame!r} is not HxW in pixels, e.g. 336x448.") from None
    with user_input(ConfigError):  # the config dataclasses name the bad flag's field
        cfg = ServerConfig(token=a.token or secrets.token_urlsafe(18), max_sessions=a.max_sessions,
                           sessions_per_client=a.sessions_per_client, fps=a.fps, frame_hw=frame_hw,
                           batch_wait_s=a.batch_wait, max_frame_bytes=a.max_frame_kib << 10,
                           max_client_fps=a.max_client_fps, max_question_chars=a.max_question_chars,
                           max_upload_bytes=a.max_upload_mib << 20, allow_server_sources=not a.no_server_sources)
        scfg = StreamConfig(vision_window=a.vision_window, text_sink=a.text_sink, text_window=a.text_window,
                            max_new_tokens=a.max_new_tokens, vision_tokens=cfg.vision_tokens,
                            question_tokens=a.question_tokens, answer_tokens=a.answer_tokens)
    load_config(a.ckpt)  # a missing or damaged checkpoint is named before its other files are read
    with user_input(CheckpointError):  # a generation_config.json, tokenizer or weights that do not fit
        sampling = SamplingConfig.from_generation_config(a.ckpt, temperature=a.temperature or None,
                                                         greedy=a.greedy or a.temperature == 0)
        tok = ChatTokenizer.from_dir(a.ckpt)
        model_cfg, params = svlm_jax.load(a.ckpt, a.dtype)
    with user_input(ConfigError):  # a cache too small for the prompt, stop ids outside the vocabulary
        st = Streamer(model_cfg, params, tok, scfg, sampling=sampling, batch=cfg.max_sessions, seed=a.seed,
                      stop_ids=stop_ids_for(tok, a.ckpt))
    return cfg, st


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (2 for bad input, 130 when stopped by Ctrl-C while loading)."""
    from svlm_jax.errors import cli_main

    a = parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli_main(lambda: _serve(a), "python -m experiments.serve")


def _serve(a: argparse.Namespace) -> int:
    cfg, st = build(a)
    import uvicorn

    from svlm_jax.serve.app import create_app, ws_max_size

    host = f"[{a.host}]" if ":" in a.host else a.host

    def ready() -> None:
        print(f"svlm-jax serving {a.ckpt}: {cfg.max_sessions} sessions, {cfg.fps} FPS at {a.frame}\n"
              f"  open  http://{host}:{a.port}/#token={cfg.token}\n"
              f"  token {cfg.token}", flush=True)

    print("compiling the step (once, before the first session)...", file=sys.stderr, flush=True)
    app = create_app(cfg, st, info={"ckpt": a.ckpt}, on_ready=ready)
    try:
        uvicorn.run(app, host=a.host, port=a.port, ws_max_size=ws_max_size(cfg), log_level=a.log_level)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
