"""Inf-Streams-Eval: generate commentary, judge it A/B against another model's, and score
(docs/ORIGINAL.md §Inf-Streams-Eval).

    python -m experiments.eval_inf_streams generate --data DIR --ckpt CKPT --out results/svlm [--chunk 100]
    python -m experiments.eval_inf_streams gpt-baseline --data DIR --clips temp_score_clips.jsonl --out results/gpt
    python -m experiments.eval_inf_streams judge --clips temp_score_clips.jsonl --a results/svlm/merged_result.jsonl \
        --b results/gpt/merged_result.jsonl --judge openai:gpt-5 --out results/svlm_vs_gpt
    python -m experiments.eval_inf_streams score --clips temp_score_clips.jsonl --out results/svlm_vs_gpt \
        [--a ... --b ...]

Every step resumes: generate continues each game from its last logged second, judge never asks a cached
question again, gpt-baseline asks only missing windows. Bad input is one line on stderr and exit code 2;
Ctrl-C exits 130 with everything done so far on disk; skipped or failed items are counted and exit 1.
See docs/EVALUATION.md for the files each step writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from svlm_jax.eval.datasets import Problems


# ---------------------------------------------------------------------------- shared with eval_livesports
def add_model_flags(ap: argparse.ArgumentParser, *, start: bool = True) -> None:
    """Checkpoint, cache, sampling and frame flags of a generate command (defaults: the paper's protocol)."""
    from svlm_jax.cache import StreamConfig

    d = StreamConfig()
    ap.add_argument("--ckpt", required=True, help="svlm-jax checkpoint directory (with tokenizer.json)")
    ap.add_argument("--out", required=True, help="output directory (created; reused to resume)")
    ap.add_argument("--batch", type=int, default=4, help="streams generated at once, as rows of one batch (4)")
    ap.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (0.9, the paper's)")
    ap.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    ap.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's generation_config.json")
    ap.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's generation_config.json")
    ap.add_argument("--repetition-penalty", type=float, default=1.05, help="(1.05)")
    ap.add_argument("--seed", type=int, default=42, help="sampler seed (42)")
    ap.add_argument("--vision-window", type=int, default=d.vision_window, help="seconds of vision kept (16)")
    ap.add_argument("--text-sink", type=int, default=d.text_sink, help="(512)")
    ap.add_argument("--text-window", type=int, default=d.text_window, help="(512)")
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per second, at most (20)")
    ap.add_argument("--vision-tokens", type=int, default=768,
                    help="room for one second's vision tokens (768 = the pixel budget's most; 0 = size to the "
                         "first second of each batch)")
    ap.add_argument("--query-tokens", type=int, default=d.query_tokens, help="room for the query (128)")
    ap.add_argument("--fps", type=int, default=None,
                    help="frames per second fed to the model (default: the checkpoint's preprocessing.json, else 2)")
    ap.add_argument("--min-pixels", type=int, default=None,
                    help="per-frame pixel floor (default: the checkpoint's preprocessing.json, else 100*28*28)")
    ap.add_argument("--max-pixels", type=int, default=None,
                    help="per-frame pixel budget (default: the checkpoint's preprocessing.json, else 768*28*28)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: as stored")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    d = ap.add_argument_group("several processes (each streams every P-th game; one device each)")
    d.add_argument("--process-index", type=int, default=None,
                   help="this process, without jax.distributed (default: jax.process_index())")
    d.add_argument("--process-count", type=int, default=None,
                   help="processes, without jax.distributed (default: jax.process_count())")
    d.add_argument("--coordinator", help="jax.distributed: host:port of process 0")
    d.add_argument("--num-processes", type=int, help="jax.distributed: number of processes")
    d.add_argument("--process-id", type=int, help="jax.distributed: this process's index")
    d.add_argument("--distributed-auto", action="store_true", help="jax.distributed: detect SLURM/MPI/TPU settings")


def start_processes(a: argparse.Namespace) -> tuple[int | None, int | None]:
    """Start jax.distributed when asked (before any other JAX call) -> this process's (index, count) for
    `generation.shard` (None, None: ask JAX)."""
    from svlm_jax.errors import ConfigError
    from svlm_jax.train.sharding import init_distributed

    if (a.process_index is None) != (a.process_count is None):
        raise ConfigError("Pass --process-index and --process-count together (or neither).")
    if a.process_count is not None and not 0 <= a.process_index < a.process_count:
        raise ConfigError(f"--process-index must be in 0..{a.process_count - 1}, got {a.process_index}.")
    init_distributed(a.coordinator, a.num_processes, a.process_id, auto=a.distributed_auto)
    return a.process_index, a.process_count


def stream_settings(a: argparse.Namespace, *, text_sink: int | None = None, text_window: int | None = None):
    """(SamplingConfig, StreamConfig, Preprocessing, settings logged in every job header) of a generate
    command, read without loading the model. The frames follow the checkpoint's preprocessing.json, with
    --fps / --min-pixels / --max-pixels over it."""
    import dataclasses

    from svlm_jax.cache import StreamConfig
    from svlm_jax.checkpoint import load_preprocessing
    from svlm_jax.errors import ConfigError
    from svlm_jax.stream import SamplingConfig

    if a.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {a.batch}.")
    sampling = SamplingConfig.from_generation_config(
        a.ckpt, temperature=a.temperature if a.temperature > 0 else None, top_k=a.top_k, top_p=a.top_p,
        repetition_penalty=a.repetition_penalty, greedy=a.greedy or a.temperature == 0)
    scfg = StreamConfig(vision_window=a.vision_window, text_sink=a.text_sink if text_sink is None else text_sink,
                        text_window=a.text_window if text_window is None else text_window,
                        max_new_tokens=a.max_new_tokens, vision_tokens=a.vision_tokens or None,
                        query_tokens=a.query_tokens)
    pre = load_preprocessing(a.ckpt).replace(fps=a.fps, min_pixels=a.min_pixels, max_pixels=a.max_pixels)
    settings = {"ckpt": os.path.abspath(a.ckpt), "dtype": a.dtype, "seed": a.seed, "sampling": repr(sampling),
                "stream": repr(scfg), **dataclasses.asdict(pre)}
    return sampling, scfg, pre, settings


def load_setup(a: argparse.Namespace, *, text_sink: int | None = None, text_window: int | None = None):
    """The StreamSetup of a generate command: model, tokenizer, StreamConfig, sampling and logged settings."""
    import svlm_jax
    from svlm_jax.eval.generation import StreamSetup
    from svlm_jax.stream import stop_ids_for
    from svlm_jax.tokenizer import ChatTokenizer

    sampling, scfg, pre, settings = stream_settings(a, text_sink=text_sink, text_window=text_window)
    tok = ChatTokenizer.from_dir(a.ckpt)
    stop_ids = stop_ids_for(tok, a.ckpt)
    cfg, params = svlm_jax.load(a.ckpt, a.dtype)
    tok.check_model(cfg)
    return StreamSetup(cfg, params, tok, scfg, sampling, stop_ids=stop_ids, seed=a.seed, preprocessing=pre,
                       settings=settings)


def add_judge_flags(ap: argparse.ArgumentParser) -> None:
    """The judge backend and its client settings."""
    ap.add_argument("--judge", required=True, help="openai:MODEL (any OpenAI-compatible endpoint) or local:CKPT")
    ap.add_argument("--base-url", default=None, help="endpoint base URL (default: $OPENAI_BASE_URL)")
    ap.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY, then $OPENAI_KEY)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    ap.add_argument("--retries", type=int, default=4, help="retries per request, with exponential backoff (4)")
    ap.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubled after (2)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (8)")
    ap.add_argument("--cache", default=None, help="judgment cache JSONL (default: OUT/judgments.jsonl)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="local judge dtype")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")


def make_judge(a: argparse.Namespace):
    """The judge of --judge with the client flags."""
    from svlm_jax.eval.judges import parse_judge

    return parse_judge(a.judge, base_url=a.base_url, api_key=a.api_key, timeout=a.timeout, retries=a.retries,
                       backoff=a.backoff, dtype=a.dtype)


def local_judge_ckpt(a: argparse.Namespace) -> str | None:
    """The checkpoint of a `--judge local:CKPT` (an input of the judge step), else None."""
    kind, _, name = a.judge.partition(":")
    return name if kind == "local" and name else None


def check_model_outputs(a: argparse.Namespace, inputs) -> None:
    """Refuse a generate command whose --ckpt is not a checkpoint or whose --out is, or lies inside, one of
    `inputs` or the checkpoint (before anything is read or written)."""
    from svlm_jax.checkpoint import load_config
    from svlm_jax.errors import check_output

    check_output(a.out, [*inputs, a.ckpt], what="--out directory")
    load_config(a.ckpt)  # a missing or damaged checkpoint is named now, not after the data has been read


def open_judging(a: argparse.Namespace, inputs, outputs: tuple[str, ...]):
    """(judge, JudgmentCache) of a judge command, after refusing an --out, a --cache or an output file in OUT
    (`outputs`) that is one of `inputs` (or the local judge's checkpoint); creates OUT."""
    from svlm_jax.errors import check_output
    from svlm_jax.eval.judgments import JudgmentCache

    inputs = [*inputs, local_judge_ckpt(a)]
    cache = a.cache or os.path.join(a.out, "judgments.jsonl")
    check_output(a.out, inputs, what="--out directory")
    check_output(cache, inputs, what="judgment cache (--cache)")
    for name in outputs:
        check_output(os.path.join(a.out, name), [*inputs, cache], what=f"output {name}")
    judge = make_judge(a)
    os.makedirs(a.out, exist_ok=True)
    return judge, JudgmentCache(cache)


def run_command(a: argparse.Namespace, commands, prog: str) -> int:
    """Run the subcommand `commands[a.cmd]` of an evaluation CLI through `errors.cli_main`: its exit code, bad
    input as one line and 2, Ctrl-C as 130 with everything done so far on disk."""
    from svlm_jax.errors import cli_main

    # StreamConfig, SamplingConfig and the Streamer's sessions report bad flags as ValueError, files as OSError.
    return cli_main(lambda: commands[a.cmd](a), prog, catch=(OSError, ValueError),
                    interrupted="interrupted; everything done so far is on disk, rerun the same command to resume.")


def report(problems: Problems, what: str) -> int:
    """Print the counted skips/failures (first few in full) to stderr; 0 when there were none, else 1."""
    if not len(problems):
        return 0
    print(f"{what}: {problems.summary()}", file=sys.stderr)
    for m in problems.messages[:10]:
        print(f"  {m}", file=sys.stderr)
    if len(problems.messages) > 10:
        print(f"  ... and {len(problems.messages) - 10} more", file=sys.stderr)
    return 1


def write_json(path: str, obj) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    tmp = f"{path}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def write_jsonl(path: str, rows) -> None:
    """Write JSON lines atomically."""
    tmp = f"{path}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- commands
def cmd_generate(a: argparse.Namespace) -> int:
    from svlm_jax.errors import ConfigError, DataError, need_dir, need_file
    from svlm_jax.eval import generation
    from svlm_jax.eval.datasets import read_games

    need_dir(a.data, "--data", "the Inf-Streams-Eval directory (eval_all_metadata.jsonl and the game videos)")
    need_file(a.metadata, "--metadata", "eval_all_metadata.jsonl or leave it out")
    if a.chunk is not None and a.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1 second, got {a.chunk}; leave it out for one stream per game.")
    games, problems = read_games(a.data, a.metadata)
    check_model_outputs(a, [a.data, a.metadata])
    jobs, p2 = generation.inf_streams_jobs(games, start=a.start, chunk=a.chunk)
    problems.extend(p2)
    if not jobs:
        report(problems, "metadata")
        raise DataError(f"No game to stream in {a.data} (see above); check --data and --start.")
    mine = generation.shard(jobs, *start_processes(a))
    if generation.all_done(mine, a.out, stream_settings(a)[3]):
        summary = {"jobs": len(mine), "done": 0, "skipped_done": len(mine), "seconds": 0, "messages": []}
    else:  # loading a large checkpoint only when there is something to stream
        summary = generation.run_jobs(mine, load_setup(a), a.out, batch=a.batch, progress=not a.no_progress)
    path, p3 = generation.merge_inf_streams(jobs, a.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "messages"}))
    print(f"wrote {path}", file=sys.stderr)
    for m in summary["messages"]:
        problems.add("generation", m)
    rc = report(problems, "skipped")
    import jax

    if len(p3) and jax.process_count() == 1 and (a.process_count or 1) == 1:
        rc = max(rc, report(p3, "merge"))
    return rc


def cmd_gpt_baseline(a: argparse.Namespace) -> int:
    from svlm_jax.errors import check_output, need_dir
    from svlm_jax.eval import gpt_baseline
    from svlm_jax.eval.datasets import read_windows
    from svlm_jax.eval.judges import OpenAIJudge

    need_dir(a.data, "--data", "the Inf-Streams-Eval directory (the game videos)")
    check_output(a.out, [a.data, a.clips], what="--out directory")
    windows, problems = read_windows(a.clips)
    client = OpenAIJudge(a.model, base_url=a.base_url, api_key=a.api_key, timeout=a.timeout, retries=2,
                         backoff=a.backoff, temperature=None)  # the original: no temperature, 3 tries
    path, p2 = gpt_baseline.generate(windows, a.data, client, a.out, concurrency=a.concurrency,
                                     progress=not a.no_progress)
    print(f"wrote {path}", file=sys.stderr)
    return max(report(problems, "clips"), report(p2, "baseline"))


def cmd_judge(a: argparse.Namespace) -> int:
    from svlm_jax.eval import inf_streams
    from svlm_jax.eval.datasets import read_merged, read_windows

    windows, problems = read_windows(a.clips)
    ma, pa = read_merged(a.a)
    mb, pb = read_merged(a.b)
    pairs, pp = inf_streams.pair_windows(windows, ma, mb)
    problems.extend(pa, pb, pp)
    judge, cache = open_judging(a, [a.clips, a.a, a.b], ("judged.jsonl",))
    try:
        records, pj = inf_streams.judge_pairs(pairs, judge, cache, concurrency=a.concurrency,
                                              progress=not a.no_progress)
    finally:
        print(f"{cache.asked} questions asked now, {len(cache)} in the cache {cache.path}", file=sys.stderr)
    write_jsonl(os.path.join(a.out, "judged.jsonl"), records)
    s = inf_streams.score(records, windows)
    print(f"{len(records)} windows judged; win rate of A {s['win_rate_A_percent']:.2f}% "
          f"(95% CI {100 * s['ci95'][0]:.2f}-{100 * s['ci95'][1]:.2f}); wrote {a.out}/judged.jsonl", file=sys.stderr)
    return max(report(problems, "windows skipped"), report(pj, "judge failures (rerun to retry)"))


def cmd_score(a: argparse.Namespace) -> int:
    from svlm_jax.errors import ConfigError, DataNotFound, check_output
    from svlm_jax.eval import inf_streams
    from svlm_jax.eval.datasets import iter_jsonl, read_merged, read_windows

    if (a.a is None) != (a.b is None):
        raise ConfigError("Pass --a and --b together (the judge-free metrics compare both), or neither.")
    if a.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1 resample, got {a.bootstrap}.")
    judged = os.path.join(a.out, "judged.jsonl")
    # The judge step's files (judged.jsonl, the judgment cache) are inputs here.
    inputs = [a.clips, a.a, a.b, judged, os.path.join(a.out, "judgments.jsonl")]
    for name in ("scores.json", "segments.png"):
        check_output(os.path.join(a.out, name), inputs, what=f"output {name}")
    windows, problems = read_windows(a.clips)
    if not os.path.exists(judged):
        raise DataNotFound(f"No {judged}; run the judge step first with the same --out.")
    records = [r for _, r in iter_jsonl(judged, problems)]
    s = inf_streams.score(records, windows, n_boot=a.bootstrap)
    if a.a is not None:
        ma, _ = read_merged(a.a)
        mb, _ = read_merged(a.b)
        pairs, _ = inf_streams.pair_windows(windows, ma, mb)
        s["offline"] = {"A": inf_streams.offline_metrics(pairs, ma, "a"),
                        "B": inf_streams.offline_metrics(pairs, mb, "b")}
    write_json(os.path.join(a.out, "scores.json"), s)
    inf_streams.plot_segments(s["segments"], os.path.join(a.out, "segments.png"))
    print(f"win rate of A: {s['win_rate_A_percent']:.2f}%  (votes A {s['votes_A']}, B {s['votes_B']}, "
          f"{s['windows']} windows; bootstrap 95% CI {100 * s['ci95'][0]:.2f}-{100 * s['ci95'][1]:.2f}%)")
    print(f"{'video':<28}{'windows':>8}{'A':>6}{'B':>6}{'win %':>8}")
    for v, row in s["per_video"].items():
        print(f"{v:<28}{row['windows']:>8}{row['A']:>6}{row['B']:>6}{100 * row['win_rate']:>8.2f}")
    segs = [f"{int(100 * g['lo'])}-{int(100 * g['hi'])}%: " + (f"{100 * g['win_rate']:.1f}" if g["windows"] else "-")
            for g in s["segments"]]
    print("segments: " + "  ".join(segs))
    for side, m in s.get("offline", {}).items():
        print(f"{side}: word F1 {m['word_f1']:.4f}  ROUGE-L {m['rouge_l']:.4f}  median lag {m['median_lag_s']} s  "
              f"matched words {m['matched_words']}")
    print(f"wrote {a.out}/scores.json and {a.out}/segments.png", file=sys.stderr)
    return report(problems, "skipped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.eval_inf_streams", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="stream every game and write merged_result.jsonl")
    g.add_argument("--data", required=True, help="Inf-Streams-Eval directory (eval_all_metadata.jsonl + videos)")
    g.add_argument("--metadata", default=None, help="metadata file (default: DATA/eval_all_metadata.jsonl)")
    g.add_argument("--start", type=int, default=1000, help="first second of every game (1000)")
    g.add_argument("--chunk", type=int, default=None,
                   help="chunked mode: a fresh stream every CHUNK seconds, re-seeded with the ground truth so far "
                        "(the paper's dagger rows use 100); default: one stream per game")
    add_model_flags(g)

    b = sub.add_parser("gpt-baseline", help="the GPT-4o-mini baseline through an OpenAI-compatible endpoint")
    b.add_argument("--data", required=True, help="Inf-Streams-Eval directory (the videos)")
    b.add_argument("--clips", required=True, help="windows to describe (temp_score_clips.jsonl)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--model", default="gpt-4o-mini", help="model name (gpt-4o-mini)")
    b.add_argument("--base-url", default=None)
    b.add_argument("--api-key", default=None)
    b.add_argument("--timeout", type=float, default=120.0)
    b.add_argument("--backoff", type=float, default=2.0)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--no-progress", action="store_true")

    j = sub.add_parser("judge", help="pairwise A/B judging per scoring window")
    j.add_argument("--clips", required=True, help="temp_score_clips.jsonl")
    j.add_argument("--a", required=True, help="merged_result.jsonl of A (the model; the paper's win rate is A's)")
    j.add_argument("--b", required=True, help="merged_result.jsonl of B (e.g. the GPT-4o-mini baseline)")
    j.add_argument("--out", required=True, help="output directory (judged.jsonl, judgments.jsonl)")
    add_judge_flags(j)

    s = sub.add_parser("score", help="win rate, per-video table, bootstrap CI, segments plot, offline metrics")
    s.add_argument("--clips", required=True, help="temp_score_clips.jsonl")
    s.add_argument("--out", required=True, help="the judge step's output directory")
    s.add_argument("--a", default=None, help="merged_result.jsonl of A, for the judge-free metrics")
    s.add_argument("--b", default=None, help="merged_result.jsonl of B, for the judge-free metrics")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (2000)")
    return ap.parse_args(argv)


COMMANDS = {"generate": cmd_generate, "gpt-baseline": cmd_gpt_baseline, "judge": cmd_judge, "score": cmd_score}


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (2 bad input, 130 interrupted, 1 when items were skipped or failed).
    A rerun of an interrupted command resumes it."""
    return run_command(parse_args(argv), COMMANDS, "python -m experiments.eval_inf_streams")


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
