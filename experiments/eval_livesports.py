"""LiveSports-3K-CC: generate commentary per event clip and judge it A/B against a baseline
(docs/ORIGINAL.md §LiveSports-3K-CC).

    python -m experiments.eval_livesports generate --events events.jsonl --videos DIR --ckpt CKPT --out results/ls
    python -m experiments.eval_livesports judge --events events.jsonl --baseline captions/BASELINE.jsonl \
        --pred results/ls/predictions.jsonl --judge openai:gpt-4o-mini --out results/ls_vs_baseline

events.jsonl is the HF `stdKonjac/LiveSports-3K` config `LiveSports_3K_CC`, split test, exported to JSON lines
(docs/EVALUATION.md). Both steps resume; exit codes as experiments.eval_inf_streams.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from experiments.eval_inf_streams import (add_judge_flags, add_model_flags, check_model_outputs, load_setup,
                                          open_judging, report, run_command, start_processes, write_json,
                                          write_jsonl)


def cmd_generate(a: argparse.Namespace) -> int:
    from svlm_jax.errors import DataError, need_dir
    from svlm_jax.eval import generation, livesports
    from svlm_jax.eval.datasets import read_events
    from svlm_jax.tokenizer import ChatTokenizer

    need_dir(a.videos, "--videos", "the directory the events' `video` paths are relative to")
    events, problems = read_events(a.events, a.videos)
    check_model_outputs(a, [a.events, a.videos])
    if not events:
        report(problems, "events")
        raise DataError(f"No event with a video under {a.videos}; check --events and --videos.")
    jobs = generation.shard(livesports.jobs(events), *start_processes(a))
    sink = window = None
    if a.no_truncation:  # the original passes no sink/window: the previous text and commentary are never cut
        tok = ChatTokenizer.from_dir(a.ckpt)
        longest = max(len(tok.encode(j.previous_text)) + j.seconds * (a.max_new_tokens + 4) for j in jobs)
        sink, window = longest, 0
    setup = load_setup(a, text_sink=sink, text_window=window)
    summary = generation.run_jobs(jobs, setup, a.out, batch=a.batch, progress=not a.no_progress)
    path, p2 = generation.write_predictions(livesports.jobs(events), a.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "messages"}))
    print(f"wrote {path}", file=sys.stderr)
    for m in summary["messages"]:
        problems.add("generation", m)
    rc = report(problems, "skipped")
    import jax

    if jax.process_count() == 1 and (a.process_count or 1) == 1:
        rc = max(rc, report(p2, "predictions"))
    return rc


def cmd_judge(a: argparse.Namespace) -> int:
    from svlm_jax.eval import livesports
    from svlm_jax.eval.datasets import read_events, read_predictions

    events, problems = read_events(a.events, need_video=False)
    baseline, pb = read_predictions(a.baseline)
    model, pm = read_predictions(a.pred)
    problems.extend(pb, pm)
    judge, cache = open_judging(a, [a.events, a.baseline, a.pred], ("judged.jsonl", "score.json"))
    score, records, pj = livesports.judge(baseline, model, {e.id: e.asr for e in events}, judge, cache,
                                          concurrency=a.concurrency, progress=not a.no_progress)
    write_jsonl(os.path.join(a.out, "judged.jsonl"), records)
    write_json(os.path.join(a.out, "score.json"), score)
    print(f"Winning rate of the model vs the baseline: {score['win_rate_percent']}% over {score['events']} events "
          f"({score['model_wins']} wins of {2 * score['events']} votes)")
    return max(report(problems, "inputs"), report(pj, "judging"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.eval_livesports", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="stream every event clip and write predictions.jsonl")
    g.add_argument("--events", required=True, help="LiveSports_3K_CC test split as JSON lines")
    g.add_argument("--videos", required=True, help="directory the events' `video` paths are relative to")
    g.add_argument("--no-truncation", action="store_true",
                   help="never cut the previous text (the original passes no text sink/window)")
    add_model_flags(g)
    j = sub.add_parser("judge", help="A/B judge against a baseline caption file; win = model wins / 2N")
    j.add_argument("--events", required=True, help="the events file (its event_asr_text is the human commentary)")
    j.add_argument("--baseline", required=True, help="baseline predictions {video_id, event_id, pred} JSONL")
    j.add_argument("--pred", required=True, help="the model's predictions.jsonl")
    j.add_argument("--out", required=True, help="output directory (judged.jsonl, score.json, judgments.jsonl)")
    add_judge_flags(j)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (2 bad input, 130 interrupted, 1 when items were skipped or failed).
    A rerun of an interrupted command resumes it."""
    return run_command(parse_args(argv), {"generate": cmd_generate, "judge": cmd_judge},
                       "python -m experiments.eval_livesports")


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
