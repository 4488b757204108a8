"""The one-shot GPU measurement: every decode-speed figure the project needs, in one process, each bounded.

    bash experiments/gpu_suite.sh OUTDIR          # on one H100/H200, about 9 minutes; prints the table last
    python -m experiments.gpu_suite --out OUTDIR --preset tiny --grid 4x4 --smoke   # the same code on a CPU

One set of random 7B weights (bf16) serves every measurement, so the model is built once:
  1. streaming at --frame (720p) and 2 FPS, with the roofline (bytes per token against the measured bandwidth);
  2. recompute at the same shapes, for the ratio to streaming;
  3. streaming at 8 FPS (4x the vision tokens per second): does it keep real time, with what headroom;
  4. B streams in one Streamer (--batches; B = 1 is part 1);
  5. the decoder attention as a fused cuDNN kernel (`ModelConfig.attention="cudnn"`);
  6. int8 weights (`quantize_params`), last, because it replaces the bf16 weights in memory.
Each part runs under its own wall-clock budget, and a part that fails is recorded with its error while the
rest go on. Results go to OUTDIR/gpu_suite.json (rewritten after each part) and a PNG per part.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_stream import (bench_tokenizer, grid_of, plot, random_params, read_bandwidth, roofline,
                                      run_mode)
from svlm_jax import ModelConfig, count_params
from svlm_jax.cache import StreamConfig
from svlm_jax.stream import SamplingConfig


def _args(base, **kw):
    a = copy.copy(base)
    a.batch, a.kv_dtype, a.previous_text, a.max_cache_gib, a.progress = 1, None, False, 1e9, 0
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _summary(rec: dict) -> dict:
    """Steady-state medians (after the first 5 seconds) of one run."""
    n = len(rec["second"])
    if n < 2:
        return {"seconds": n}
    sl = slice(min(5, n - 1), None)
    tot = float(np.median(rec["total_ms"][sl]))
    dec = np.asarray(rec["decode_ms"][sl]) / np.maximum(np.asarray(rec["tokens"][sl]), 1)
    return {"seconds": n, "ms_per_video_s": round(tot, 2), "ms_per_token": round(float(np.median(dec)), 3),
            "vision_ms": round(float(np.median(rec["vision_ms"][sl])), 2),
            "prefill_ms": round(float(np.median(rec["prefill_ms"][sl])), 2),
            "real_time_headroom": round(1000.0 / tot, 2)}


def main(argv: list[str] | None = None) -> int:
    """Run the parts in order under their budgets; print one summary table at the end."""
    ap = argparse.ArgumentParser(prog="python -m experiments.gpu_suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=("tiny", "100m", "3b", "7b"), default="7b")
    ap.add_argument("--frame", default="720p")
    ap.add_argument("--grid", default=None)
    ap.add_argument("--budget-s", type=float, default=60.0, help="wall budget of each part")
    ap.add_argument("--seconds", type=int, default=120, help="most stream seconds per part")
    ap.add_argument("--batches", default="2,4,8", help="batch sizes besides 1 (part stream_2fps is B = 1)")
    ap.add_argument("--bandwidth-mib", type=int, default=2048)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per part (checks the plumbing)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.smoke:
        args.seconds, args.budget_s, args.bandwidth_mib, args.batches = 8, 30.0, 64, "2"
    args.fps, args.mode_budget_s = 2, args.budget_s
    os.makedirs(args.out, exist_ok=True)
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    device = jax.devices()[0]
    cfg = ModelConfig.preset(args.preset, dtype=dtype)
    t0 = time.perf_counter()
    params = random_params(cfg, args.seed, jnp.dtype(dtype))
    jax.block_until_ready(params)
    tok = bench_tokenizer(cfg)
    grid = grid_of(args)
    bandwidth = read_bandwidth(args.bandwidth_mib)
    result = {"preset": args.preset, "params": count_params(params), "dtype": dtype,
              "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "grid_patches": list(grid),
              "bandwidth": bandwidth, "init_s": round(time.perf_counter() - t0, 1),
              "command": " ".join(["python -m experiments.gpu_suite"] + (argv or sys.argv[1:])), "parts": {}}
    print(f"{args.preset} {dtype} on {result['device']}: built in {result['init_s']} s; read bandwidth "
          f"{bandwidth['gbs']:.1f} GB/s", file=sys.stderr, flush=True)

    def scfg_for(fps):
        return StreamConfig(vision_tokens=(-(-fps // 2)) * grid[0] * grid[1] // 4)

    def part(name, mode, p, c, fps=2, **kw):
        a = _args(args, fps=fps, seconds=args.seconds, **kw)
        t = time.perf_counter()
        try:
            rec = run_mode(mode, c, p, tok, scfg_for(fps), SamplingConfig(), a, grid)
            s = _summary(rec)
            if s.get("ms_per_token"):
                s["roofline"] = roofline(c, p, scfg_for(fps), None, a.batch, s["ms_per_token"], bandwidth)
            result["parts"][name] = {"summary": s, "mode": mode, "fps": fps, "batch": a.batch,
                                     "stopped": rec["stopped"], "wall_s": round(time.perf_counter() - t, 1)}
            plot({"preset": args.preset, "device": result["device"], "modes": {name: rec}},
                 os.path.join(args.out, f"gpu_suite_{name}.png"))
        except Exception as e:  # noqa: BLE001 - one failed part must not lose the others
            result["parts"][name] = {"error": f"{type(e).__name__}: {e}"[:500],
                                     "traceback": traceback.format_exc()[-2000:]}
        s = result["parts"][name].get("summary", {})
        print(f"{name}: {s or result['parts'][name].get('error')}", file=sys.stderr, flush=True)
        with open(os.path.join(args.out, "gpu_suite.json.tmp"), "w") as f:
            json.dump(result, f, indent=1)
        os.replace(os.path.join(args.out, "gpu_suite.json.tmp"), os.path.join(args.out, "gpu_suite.json"))

    part("stream_2fps", "streaming", params, cfg)
    part("recompute_2fps", "recompute", params, cfg)
    part("stream_8fps", "streaming", params, cfg, fps=8)
    for b in (int(x) for x in args.batches.split(",")):
        part(f"batch_{b}", "streaming", params, cfg, batch=b)
    if jax.default_backend() == "gpu":
        part("stream_2fps_cudnn", "streaming", params, cfg.replace(attention="cudnn"))
    from svlm_jax.quant import quantize_params

    qp = quantize_params(cfg, params)
    del params
    part("stream_2fps_int8", "streaming", qp, cfg)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    """The summary table: one row per part."""
    print(f"\n{result['preset']} {result['dtype']} on {result['device']}, grid {result['grid_patches']}, "
          f"read bandwidth {result['bandwidth']['gbs']:.1f} GB/s")
    print(f"{'part':<20} {'ms/video s':>11} {'ms/token':>9} {'headroom':>9} {'GB/s':>8} {'of bw':>6}  note")
    for name, r in result["parts"].items():
        s = r.get("summary", {})
        roof = s.get("roofline", {})
        note = r.get("error", "") or (r.get("stopped") or "")
        print(f"{name:<20} {s.get('ms_per_video_s', float('nan')):>11.1f} {s.get('ms_per_token', float('nan')):>9.3f} "
              f"{s.get('real_time_headroom', float('nan')):>9.2f} {roof.get('achieved_gbs', float('nan')):>8.1f} "
              f"{roof.get('fraction_of_measured') or float('nan'):>6.2f}  {note[:60]}")


if __name__ == "__main__":
    sys.exit(main())
