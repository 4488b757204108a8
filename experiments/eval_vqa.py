"""Video QA on OVO-Bench, LongVideoBench, Video-MME or MVBench with a converted checkpoint.

    python -m experiments.eval_vqa --bench ovo|lvb|videomme|mvbench --data DIR --ckpt CKPT \
        [--mode offline|streaming] [--out OUT] [--batch 4] [--attn-chunk 1024] [--limit N]

--mode offline (default) answers as the original: the whole clip, full attention, the answer read from the
option tokens' logits (docs/ORIGINAL.md §OVO-Bench, §Video-MME, LongVideoBench, MVBench). --mode streaming
plays each video through the streaming cache at 2 FPS and asks each question at its second. Predictions go
to OUT/predictions.jsonl as they come, so a killed run resumes where it stopped; OUT/scores.json (every
prediction and score) and OUT/table.md are written at the end. Missing or unreadable videos are counted and
skipped; malformed records are listed with their file and line. Exit code 2 for bad input, 130 when
interrupted (the predictions are kept).
"""
from __future__ import annotations

import argparse
import os
import sys

from svlm_jax.eval.vqa.protocols import BENCHES, PROTOCOLS

MODES = ("offline", "streaming")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI's flags."""
    ap = argparse.ArgumentParser(prog="python -m experiments.eval_vqa", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, choices=BENCHES, help="benchmark")
    ap.add_argument("--data", required=True, help="the benchmark's directory as released (see docs/EVALUATION.md)")
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (svlm_jax.save / converters.hf_to_jax)")
    ap.add_argument("--mode", choices=MODES, default="offline", help="offline (as the original) or streaming")
    ap.add_argument("--out", default=None, help="output directory (default: eval_vqa/<bench>-<mode>)")
    ap.add_argument("--batch", type=int, default=4, help="questions per forward pass offline / streams at once (4)")
    ap.add_argument("--attn-chunk", type=int, default=1024,
                    help="query rows per attention block offline; 0 = all at once (1024)")
    ap.add_argument("--vision-chunk", type=int, default=16, help="temporal grids per vision-tower call (16)")
    ap.add_argument("--max-pixels", type=int, default=None,
                    help="streaming: pixels per frame at most (default: the checkpoint's preprocessing.json, "
                         "else 768*28*28)")
    ap.add_argument("--vision-window", type=int, default=16, help="streaming: seconds of vision kept (16)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (smoke runs)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="compute and parameter dtype (default: as stored)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (2 bad input, 130 interrupted: the answers so far are kept)."""
    from svlm_jax.errors import cli_main

    a = parse_args(argv)
    return cli_main(lambda: _main(a), "python -m experiments.eval_vqa",
                    interrupted="interrupted; the answers so far are in the predictions file, rerun the same "
                                "command to resume.")


def _main(a: argparse.Namespace) -> int:
    from svlm_jax.errors import CheckpointError, ConfigError, DataError, check_output, need_dir, user_input
    from svlm_jax.eval.vqa.readers import read_bench
    from svlm_jax.eval.vqa.results import PREDICTIONS, Predictions, finish

    if a.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {a.batch}.")
    need_dir(a.data, "--data", "the benchmark's directory as released (see docs/EVALUATION.md)")
    out = a.out or os.path.join("eval_vqa", f"{a.bench}-{a.mode}")
    check_output(out, [a.data, a.ckpt], what="--out directory")
    with user_input(DataError):
        report = read_bench(a.bench, a.data)
    print(f"{PROTOCOLS[a.bench].name}: {report.summary()}", file=sys.stderr)
    for m in report.malformed[:20]:
        print(f"  malformed: {m}", file=sys.stderr)
    if len(report.malformed) > 20:
        print(f"  ... and {len(report.malformed) - 20} more (all listed in scores.json)", file=sys.stderr)
    if not report.questions:
        raise DataError(f"No question of {a.data} has its video; check --data (videos are looked up as described "
                        f"in docs/EVALUATION.md).")
    questions = report.questions[:a.limit] if a.limit else report.questions
    with user_input(CheckpointError):
        import svlm_jax
        from svlm_jax.tokenizer import ChatTokenizer

        tok = ChatTokenizer.from_dir(a.ckpt)
        cfg, params = svlm_jax.load(a.ckpt, a.dtype)
        tok.check_model(cfg)
    os.makedirs(out, exist_ok=True)
    with Predictions(os.path.join(out, PREDICTIONS)) as preds:
        if preds.done:
            print(f"resuming: {len(preds.done)} answers already in {preds.path}", file=sys.stderr)
        if a.mode == "offline":
            from svlm_jax.eval.vqa.run import run_offline

            bad = run_offline(cfg, params, tok, a.bench, questions, preds, batch=a.batch,
                              attn_chunk=a.attn_chunk or None, vision_chunk=a.vision_chunk,
                              progress=not a.no_progress)
        else:
            from svlm_jax.eval.vqa.streaming import run_streaming

            from svlm_jax.cache import StreamConfig
            from svlm_jax.checkpoint import load_preprocessing
            from svlm_jax.eval.vqa.streaming import stream_config

            # Frames as the checkpoint was trained on them; --max-pixels (with the floor under it) wins.
            pre = load_preprocessing(a.ckpt).replace(max_pixels=a.max_pixels)
            pre = pre.replace(min_pixels=min(pre.min_pixels, pre.max_pixels))
            scfg = stream_config(tok, questions, max_pixels=pre.max_pixels, fps=pre.fps,
                                 base=StreamConfig(vision_window=a.vision_window))
            bad = run_streaming(cfg, params, tok, a.bench, questions, preds, batch=a.batch, scfg=scfg,
                                preprocessing=pre, progress=not a.no_progress)
        # Question order, so scores.json does not depend on the order answers came in (streaming, resumes).
        res = finish(a.bench, a.mode, [preds.done[q.qid] for q in questions if q.qid in preds.done], out, report,
                     bad)
    if bad:
        print(f"{len(bad)} questions skipped: {len({v for _, v in bad})} videos could not be decoded "
              f"(listed in scores.json).", file=sys.stderr)
    print(res["table"])
    h = res["headline"]
    print(f"{PROTOCOLS[a.bench].name} {a.mode} {h['name']}: "
          f"{'-' if h['value'] is None else format(h['value'], '.2f')}  ({out}/scores.json)")
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
