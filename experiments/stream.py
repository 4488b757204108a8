"""Live commentary on a video file, URL or camera with a converted checkpoint.

    python -m experiments.stream --ckpt DIR --video FILE_OR_URL [--vtt out.vtt] [--jsonl] [options]

Prints each second's commentary as it comes (`[12.0-13.0s] text`; silent seconds print nothing), or with
--jsonl one JSON line per second: t0, t1, text and the vision / prefill / decode milliseconds. `--ask
"T:question"` (repeatable) asks a question mid-stream: it goes into the user turn of the second holding
video time T, and its answer is printed (`[T0-T1s] Q: ... A: ...`; "question"/"answer" in JSON). --vtt
writes WebVTT cues as they come. Bad input (missing or broken video, unreachable URL, a checkpoint or
tokenizer that does not fit, a StreamConfig too small for the prompt) is reported in one line. A stream
that ends inside a second, or Ctrl-C, flushes what was already said.

Modes: streaming (default: sinks + vision window + text window), sliding (no text sink), full (no
eviction, stops at --max-cache-gib), recompute (re-prefill the whole window every second).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import sys
from typing import IO, Callable, Iterable, Sequence

if __name__ == "__main__":
    # Ctrl-C while jax and the checkpoint load: nothing has been written yet, so leave at once with one
    # line (an interrupt inside jaxlib's or Orbax's start-up aborts, segfaults or prints tracebacks).
    # Streaming installs the flushing handlers (`_interrupt_flushes`).
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, lambda *_: (os.write(2, b"interrupted before streaming started.\n"), os._exit(130)))

from svlm_jax.cache import OLDER_TEXT_RULES, CacheFull, StreamConfig
from svlm_jax.errors import SvlmError, check_output, one_line, silence_stdout
from svlm_jax.prompt import DEFAULT_QUERY, DEFAULT_SYSTEM
from svlm_jax.stream import MODES, Comment, SamplingConfig, Streamer, stop_ids_for
from svlm_jax.video import MAX_FPS, VideoError
from svlm_jax.webvtt import cue_text as vtt_text
from svlm_jax.webvtt import vtt_time


FORMATS = ("svlm", "original")


def original_vtt_time(t: float) -> str:
    """Seconds -> the original's VTT stamp (`sec2ts`): HH:MM:SS.mmm with the milliseconds truncated, int(frac*1000)."""
    whole = int(t)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{int((t - whole) * 1000):03d}"


def original_cue(c: Comment, response: str) -> str:
    """One second as the original writes it to its VTT (streaming_vlm/inference/inference.py with
    utils/vtt_utils.py): `{start} --> {end}`, then ` Infer Time: {loop:.3f}s` and ` {response}`, the full
    response with " ..." included; the second and third lines start with a space."""
    loop = (c.vision_ms + c.prefill_ms + c.decode_ms) / 1e3
    return f"{original_vtt_time(c.t0)} --> {original_vtt_time(c.t1)}\n Infer Time: {loop:.3f}s\n {response}\n\n"


def original_segment(c: Comment, response: str) -> str:
    """One second as the original's --emit_json prints it (streaming_vlm/inference/inference.py): a "segment"
    with the response's last 4 characters cut blindly (`response[:-4]`, meant for the " ...")."""
    return json.dumps({"type": "segment", "start": float(c.t0), "end": float(c.t1), "text": response[:-4]},
                      ensure_ascii=False)


def json_line(obj) -> str:
    """One JSON line: U+2028/U+2029 escaped too, since some line readers split on them."""
    return json.dumps(obj, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class Outputs:
    """Where commentary goes: stdout (text or JSON lines) and an optional WebVTT file, flushed per second."""

    def __init__(self, *, jsonl: bool, vtt_path: str | None, out: IO[str] | None = None, fmt: str = "svlm",
                 decode: Callable[[Sequence[int]], str] | None = None):
        if fmt not in FORMATS or (fmt == "original" and decode is None):
            raise ValueError(f"fmt must be one of {FORMATS} (original needs the tokenizer's decode), got {fmt!r}.")
        self.jsonl, self.out, self.count = jsonl, out if out is not None else sys.stdout, 0
        self.fmt, self.decode = fmt, decode
        self.vtt = None
        if vtt_path:
            self.vtt = open(vtt_path, "w", encoding="utf-8")
            self.vtt.write("WEBVTT\n\n")
            self.vtt.flush()

    def write(self, c: Comment) -> None:
        """Emit one second: a JSON line or `[t0-t1s] text` (silent seconds print nothing), and a VTT cue."""
        self.count += 1
        if self.fmt == "original":
            # The full response as the original decodes it: special tokens skipped, " ..." kept.
            response = self.decode(c.tokens)
            if self.jsonl:
                print(original_segment(c, response), file=self.out, flush=True)
            elif c.text:
                print(f"[{c.t0:.1f}-{c.t1:.1f}s] {c.text}", file=self.out, flush=True)
            if self.vtt is not None:
                self.vtt.write(original_cue(c, response))
                self.vtt.flush()
            return
        if self.jsonl:
            print(json_line(c.to_json()), file=self.out, flush=True)
        else:
            if c.question is not None:
                print(f"[{c.t0:.1f}-{c.t1:.1f}s] Q: {c.question} A: {c.answer}", file=self.out, flush=True)
            if c.text:
                print(f"[{c.t0:.1f}-{c.t1:.1f}s] {c.text}", file=self.out, flush=True)
        cue = vtt_text(c.text) if self.vtt is not None else ""
        if cue:
            self.vtt.write(f"{vtt_time(c.t0)} --> {vtt_time(c.t1)}\n{cue}\n\n")
            self.vtt.flush()

    def close(self) -> None:
        """Close the VTT file (everything was already flushed). Safe to call twice."""
        if self.vtt is not None:
            self.vtt.close()
            self.vtt = None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupt_flushes() -> None:
    """From here on SIGINT and SIGTERM stop the stream between writes: `run` flushes and reports."""
    if __name__ == "__main__":  # only the CLI process owns its signals, not a module that imports this one
        signal.signal(signal.SIGINT, _raise_interrupt)
        signal.signal(signal.SIGTERM, _raise_interrupt)


def parse_ask(text: str) -> tuple[float, str]:
    """'T:question' -> (T, question): a question for the second that holds video time T (seconds)."""
    t, sep, q = text.partition(":")
    try:
        at = float(t)
    except ValueError:
        at = float("nan")
    if not sep or not q.strip() or not at >= 0:
        raise argparse.ArgumentTypeError(f"--ask takes 'T:question' with T in seconds >= 0, got {text!r}")
    return at, q.strip()


def run(streamer: Streamer, seconds: Iterable, outputs: Outputs, asks: Iterable[tuple[float, str]] = ()) -> int:
    """Stream `seconds` through `streamer` into `outputs`; returns the exit code. Always closes the outputs.

    asks: (T, question) pairs; each is asked in the first second that ends after video time T.
    """
    pending = sorted(asks)
    try:
        for sec in seconds:
            while pending and float(sec.t1) > pending[0][0]:
                streamer.ask(0, pending.pop(0)[1])
            outputs.write(streamer.step([sec])[0])
        return 0
    except KeyboardInterrupt:
        print(f"interrupted after {outputs.count} s; what was said is flushed.", file=sys.stderr)
        return 130
    except (VideoError, SvlmError) as e:
        print(f"error: {one_line(e)} ({outputs.count} s streamed and flushed)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed by the reader (`| head`): stop quietly, the VTT is flushed
        silence_stdout()
        return 0
    except CacheFull as e:
        print(f"stopped after {outputs.count} s: {e} Use --mode streaming for endless streams.", file=sys.stderr)
        return 0
    except ValueError as e:  # e.g. a frame of another size in recompute mode, a round too long for round_tokens
        print(f"error: {e} ({outputs.count} s streamed and flushed)", file=sys.stderr)
        return 2
    finally:
        outputs.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's flags; defaults are StreamConfig's and SamplingConfig's."""
    d, s = StreamConfig(), SamplingConfig()
    ap = argparse.ArgumentParser(prog="python -m experiments.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (svlm_jax.save / converters.hf_to_jax)")
    ap.add_argument("--video", required=True, help="video file, URL (rtsp://, http(s)://) or camera /dev/videoN")
    ap.add_argument("--frames", choices=("original", "grid"), default=None,
                    help="which frames of each second: the original's picking or the 1/fps grid (default: the "
                         "checkpoint's training choice, else original)")
    ap.add_argument("--resize", choices=("torchvision", "pil"), default=None,
                    help="bicubic resize (default: the checkpoint's training choice, else torchvision)")
    ap.add_argument("--fps", type=int, default=None,
                    help=f"frames per second fed to the model, 1..{MAX_FPS} (default: the checkpoint's training fps, else 2)")
    ap.add_argument("--min-pixels", type=int, default=None,
                    help="per-frame pixel floor (default: the checkpoint's training budget, else 100*28*28)")
    ap.add_argument("--max-pixels", type=int, default=None,
                    help="per-frame pixel budget (default: the checkpoint's training budget, else 768*28*28)")
    ap.add_argument("--start", type=float, default=0.0, help="start second of a file (0)")
    ap.add_argument("--end", type=float, default=None, help="stop before this second (default: the end)")
    ap.add_argument("--duration", type=float, default=None,
                    help="stream at most this many seconds, then stop (default: until the video ends)")
    ap.add_argument("--chunk-duration", type=int, default=1,
                    help="seconds per round: each round's clip has chunk*fps frames and one Time=a-bs label (1)")
    ap.add_argument("--vision-window", type=int, default=d.vision_window, help="rounds of vision kept (16)")
    ap.add_argument("--text-round", type=int, default=16,
                    help="commentary turns kept in place, the current one included; older ones become older text (16)")
    ap.add_argument("--older-text", choices=OLDER_TEXT_RULES, default=d.older_text,
                    help="original: StreamingVLM's rules; svlm: svlm-jax's (see docs/STREAMING.md) (original)")
    ap.add_argument("--text-sink", type=int, default=d.text_sink, help="first tokens of older text kept (512)")
    ap.add_argument("--text-window", type=int, default=d.text_window, help="last tokens of older text kept (512)")
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per second, at most (20)")
    ap.add_argument("--temperature", type=float, default=None, help=f"sampling temperature ({s.temperature})")
    ap.add_argument("--top-p", type=float, default=None,
                    help="nucleus mass, 1 = off (default: the checkpoint's generation_config.json, else 1.0)")
    ap.add_argument("--top-k", type=int, default=None,
                    help="top-k, 0 = off (default: the checkpoint's generation_config.json, else 50)")
    ap.add_argument("--repetition-penalty", type=float, default=None, help=f"({s.repetition_penalty})")
    ap.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (0)")
    ap.add_argument("--system", default=DEFAULT_SYSTEM, help="system prompt")
    ap.add_argument("--query", default=DEFAULT_QUERY, help="the query of the first second ('' for none)")
    ap.add_argument("--keep-query", action="store_true", help="pin the query in the sinks")
    ap.add_argument("--previous-text", default=None, help="earlier commentary or a title, as older text")
    ap.add_argument("--pos-mode", choices=("contiguous", "native"), default="contiguous")
    ap.add_argument("--mode", choices=MODES, default="streaming")
    ap.add_argument("--max-cache-gib", type=float, default=8.0, help="memory cap of --mode full (8)")
    ap.add_argument("--query-tokens", type=int, default=d.query_tokens, help="room for the query (128)")
    ap.add_argument("--quant", choices=("int8",), default=None,
                    help="int8 weight-only quantization of the decoder and LM head (less memory to read per token)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="compute and parameter dtype (default: as stored)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a URL (10)")
    ap.add_argument("--vtt", default=None, help="write WebVTT cues to this file")
    ap.add_argument("--jsonl", action="store_true", help="print one JSON line per second")
    ap.add_argument("--ask", type=parse_ask, action="append", default=[], metavar="T:QUESTION",
                    help="ask QUESTION in the second holding video time T (repeatable)")
    ap.add_argument("--question-tokens", type=int, default=32, help="room for a question, with --ask (32)")
    ap.add_argument("--answer-tokens", type=int, default=16, help="answer tokens at most, with --ask (16)")
    ap.add_argument("--format", choices=FORMATS, default="svlm", dest="fmt",
                    help="original: the VTT cues and --jsonl lines byte for byte as StreamingVLM writes them (svlm)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the process exit code (2 for bad input, 130 when interrupted)."""
    from svlm_jax.errors import print_warnings

    try:
        with print_warnings(""):
            return _main(parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted before streaming started.", file=sys.stderr)
        return 130
    except SvlmError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        silence_stdout()
        return 0


def _main(a: argparse.Namespace) -> int:
    try:
        import svlm_jax
        from svlm_jax.checkpoint import load_config, load_preprocessing
        from svlm_jax.tokenizer import ChatTokenizer
        from svlm_jax.video import FrameStream

        if a.vtt:
            check_output(a.vtt, [a.video, a.ckpt], what="--vtt file")
        load_config(a.ckpt)  # a missing or damaged checkpoint is named before its tokenizer is looked for
        pre = load_preprocessing(a.ckpt)  # read now: a damaged preprocessing.json is named before the model loads
        # The reference's sampling: top-k/top-p and the stop ids from the checkpoint's generation_config.json.
        sampling = SamplingConfig.from_generation_config(
            a.ckpt, temperature=a.temperature or None, top_k=a.top_k, top_p=a.top_p,
            repetition_penalty=a.repetition_penalty, greedy=a.greedy or a.temperature == 0)
        base = StreamConfig(vision_window=a.vision_window, text_sink=a.text_sink, text_window=a.text_window,
                            max_new_tokens=a.max_new_tokens, query_tokens=a.query_tokens, keep_query=a.keep_query,
                            pos_mode=a.pos_mode, text_round=a.text_round, older_text=a.older_text)
        if a.chunk_duration < 1 or (a.duration is not None and a.duration <= 0):
            raise ValueError(f"--chunk-duration must be >= 1 and --duration > 0, got {a.chunk_duration} and "
                             f"{a.duration}.")
        if a.ask:  # room for questions and answers in every row, only when asked for
            base = base.replace(question_tokens=a.question_tokens, answer_tokens=a.answer_tokens)
        tok = ChatTokenizer.from_dir(a.ckpt)
        stop_ids = stop_ids_for(tok, a.ckpt)
        cfg, params = svlm_jax.load(a.ckpt, a.dtype, quant=a.quant)
        # Frames as the checkpoint was trained on them (fps, pixel budget, picking, resize); set flags win.
        frames = FrameStream.for_model(a.video, pre, fps=a.fps, min_pixels=a.min_pixels, max_pixels=a.max_pixels,
                                       sampling=a.frames, resize=a.resize, start=a.start, end=a.end,
                                       timeout=a.timeout, chunk=a.chunk_duration)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    rounds = iter(frames)  # one round per chunk_duration seconds (FrameStream(chunk=))
    if a.duration is not None:  # the original's `duration`: ceil(duration / chunk) rounds
        rounds = itertools.islice(rounds, math.ceil(a.duration / a.chunk_duration))
    try:
        try:
            first = next(rounds)
        except StopIteration:
            print(f"error: {a.video!r} gave no frames.", file=sys.stderr)
            return 2
        except VideoError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        # Size the vision rows to this video: its frames are all resized to the first one's grid.
        n_vision = int(first.grid_thw[0].prod()) // cfg.vision.merge_unit
        try:
            streamer = Streamer(cfg, params, tok, base.replace(vision_tokens=n_vision), sampling=sampling,
                                seed=a.seed, system=a.system, query=a.query or None, previous_text=a.previous_text,
                                mode=a.mode, max_cache_bytes=int(a.max_cache_gib * 2**30), stop_ids=stop_ids)
            outputs = Outputs(jsonl=a.jsonl, vtt_path=a.vtt, fmt=a.fmt, decode=tok.decode)
        except (ValueError, OSError, CacheFull) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        _interrupt_flushes()
        return run(streamer, itertools.chain([first], rounds), outputs, a.ask)
    finally:
        frames.close()


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())  # after an interrupt everything is flushed; the teardown is skipped (it can segfault)
