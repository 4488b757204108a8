"""Batched streams: step time and per-stream throughput for B streams in one `Streamer`.

    python -m experiments.bench_batch --preset tiny --grid 8x8 --batches 1,2,4,8,16 --seconds 40
    python -m experiments.bench_batch --preset 100m --grid 8x8 --batches 1,2,4,8,16 --seconds 20
    python -m experiments.bench_batch --preset 7b --frame 720p --batches 1,2,4,8 --seconds 30      # GPU

Every stream gets the same random seconds (the sampler still differs per stream), the paper's cache defaults
and 20 tokens per second; a second's step lasts until the longest turn of the batch ends. Per B it records the
median step time after the first 10 seconds (compilation and the cache filling up), the throughput in seconds
of video per wall second summed over streams, and whether the batch keeps up with real time (step <= 1 s).
This is the figure a server operator needs: streams held in real time per machine.
Writes <out>/bench_batch_<preset>.json and .png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_stream import bench_tokenizer, grid_of, random_params, roofline, run_mode
from svlm_jax import ModelConfig
from svlm_jax.cache import StreamConfig
from svlm_jax.stream import SamplingConfig


def plot(result: dict, path: str) -> None:
    """PNG: step time against B, and seconds of video per wall second against B (ideal: linear)."""
    from svlm_jax import figures

    rows = result["rows"]
    b = np.array([r["batch"] for r in rows])
    fig, (ax1, ax2) = figures.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(b, [r["step_ms"] for r in rows], "o-", label="step (all streams)")
    ax1.plot(b, [r["decode_ms_per_token"] for r in rows], "s--", label="decode ms per token step")
    ax1.axhline(1000, color="gray", lw=0.8, ls=":", label="real time (1 s of video)")
    ax1.set(xscale="log", yscale="log", xlabel="streams in one Streamer (B)", ylabel="ms",
            title=f"{result['preset']} on {result['device']}: step time")
    thr = np.array([r["video_s_per_s"] for r in rows])
    ax2.plot(b, thr, "o-", label="measured")
    ax2.plot(b, thr[0] * b, color="gray", ls=":", label="B x one stream")
    ax2.set(xscale="log", yscale="log", xlabel="streams in one Streamer (B)",
            ylabel="seconds of video per wall second", title="throughput (all streams)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    figures.save(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; rewrites <out>/bench_batch_<preset>.json and .png after every batch size."""
    ap = argparse.ArgumentParser(prog="python -m experiments.bench_batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "100m", "3b", "7b"), default="tiny")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=int, default=40, help="seconds streamed per batch size")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    ap.add_argument("--frame", default="720p")
    ap.add_argument("--grid", default=None, help="patch grid HxW instead of --frame")
    ap.add_argument("--fps", type=int, default=2)
    ap.add_argument("--quant", choices=("int8",), default=None)
    ap.add_argument("--attention", choices=("einsum", "xla", "cudnn"), default="einsum")
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop a batch size after this wall time (0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batches.split(",") if x]
    if not batches or min(batches) < 1:
        ap.error(f"--batches must list positive integers, got {args.batches!r}")
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    cfg = ModelConfig.preset(args.preset, dtype=dtype).replace(attention=args.attention)
    grid = grid_of(args)
    n_vision = (-(-args.fps // 2)) * grid[0] * grid[1] // 4
    scfg = StreamConfig(vision_tokens=n_vision)
    params = random_params(cfg, args.seed, jnp.dtype(dtype))
    if args.quant:
        from svlm_jax.quant import quantize_params

        params = quantize_params(cfg, params, args.quant)
    tok = bench_tokenizer(cfg)
    device = jax.devices()[0]
    result = {"preset": args.preset, "dtype": dtype, "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
              "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "grid_patches": list(grid),
              "fps": args.fps, "vision_tokens_per_second": n_vision, "quant": args.quant,
              "attention": args.attention, "command": " ".join(["python -m experiments.bench_batch"]
                                                               + (argv or sys.argv[1:])), "rows": []}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_batch_{args.preset}")
    for b in batches:
        run_args = copy.copy(args)
        run_args.batch, run_args.kv_dtype, run_args.previous_text = b, None, False
        run_args.max_cache_gib, run_args.mode_budget_s, run_args.progress = 1e9, args.budget_s, 0
        t = time.perf_counter()
        rec = run_mode("streaming", cfg, params, tok, scfg, SamplingConfig(), run_args, grid)
        steady = slice(min(10, len(rec["second"]) - 1), None)
        step = float(np.median(rec["total_ms"][steady]))
        dec = np.asarray(rec["decode_ms"][steady]) / np.maximum(np.asarray(rec["tokens"][steady]), 1)
        row = {"batch": b, "seconds": len(rec["second"]), "step_ms": round(step, 3),
               "decode_ms_per_token": round(float(np.median(dec)), 3),
               "video_s_per_s": round(b * 1e3 / step, 3), "real_time": step <= 1000.0,
               "wall_s": round(time.perf_counter() - t, 1),
               "roofline": roofline(cfg, params, scfg, None, b, float(np.median(dec)), {})}
        result["rows"].append(row)
        first = result["rows"][0]
        print(f"B={b}: step {step:.1f} ms, {row['video_s_per_s']:.2f} s of video per s "
              f"({row['video_s_per_s'] / first['video_s_per_s']:.2f}x B=1), decode {row['decode_ms_per_token']:.2f} "
              f"ms/token step, real time: {row['real_time']}", file=sys.stderr, flush=True)
        result["load_avg_end"] = os.getloadavg()
        with open(stem + ".json.tmp", "w") as f:
            json.dump(result, f)
        os.replace(stem + ".json.tmp", stem + ".json")
        plot(result, stem + ".png")
    print(f"wrote {stem}.json and {stem}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
