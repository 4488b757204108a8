"""Load benchmark of the commentary server: N live camera sessions on loopback, in real time, for a bounded time.

    python -m experiments.bench_serve --preset tiny --sessions 1,2,4,8 --seconds 30
    python -m experiments.bench_serve --preset 100m --sessions 1,2,4 --seconds 30

Random weights (as bench_stream). A real server (uvicorn, the engine thread) runs in this process on
127.0.0.1. For each N, N client threads each stream synthetic JPEG frames at --fps in real time for
--seconds, then stop. Reported per N: seconds commentated and skipped, p50/p99 lag behind real time, the
step time against the number of sessions in the step, and the process RSS over time. N is "held in real
time" when no second was skipped and p99 lag is below one second. The clients share the CPU with the
server, so on a small machine they cost the server some time. Writes <out>/bench_serve_<preset>.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_stream import bench_tokenizer, random_params
from svlm_jax import ModelConfig, count_params, figures
from svlm_jax.cache import StreamConfig
from svlm_jax.serve.client import Client, encode_jpeg
from svlm_jax.serve.config import ServerConfig
from svlm_jax.serve.runner import ThreadedServer
from svlm_jax.stream import SamplingConfig, Streamer


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic_jpegs(hw: tuple[int, int], n: int = 8, seed: int = 0) -> list[bytes]:
    """n JPEG frames of a bright square moving over noise, encoded once and replayed by every client."""
    rng = np.random.default_rng(seed)
    h, w = hw
    out = []
    for i in range(n):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        x = int((w - h // 4) * i / max(1, n - 1))
        img[h // 3: h // 3 + h // 4, x: x + h // 4] = (230, 40, 40)
        out.append(encode_jpeg(img, quality=80))
    return out


def run_client(url: str, token: str, jpegs: list[bytes], fps: int, seconds: float, out: dict) -> None:
    """One camera session: frames at `fps` in real time for `seconds`, then stop; messages into out."""
    try:
        with Client(url, token) as c:
            c.start()
            reader_done = threading.Event()

            def read():
                try:
                    while True:
                        m = c.recv(timeout=120)
                        if m["type"] in ("end", "error"):
                            break
                finally:
                    reader_done.set()

            threading.Thread(target=read, daemon=True).start()
            t0 = time.monotonic()
            k = 0
            while (t := k / fps) < seconds:
                delay = t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                c.frame(time.monotonic() - t0, jpegs[k % len(jpegs)])
                k += 1
            c.stop()
            reader_done.wait(300)
            out["messages"] = list(c.messages)
    except Exception as e:  # noqa: BLE001 - reported in the results
        out["error"] = f"{type(e).__name__}: {e}"


def run_load(srv: ThreadedServer, n: int, args, jpegs) -> dict:
    """N concurrent sessions for args.seconds; lag, skips, step times and RSS."""
    outs = [dict() for _ in range(n)]
    threads = [threading.Thread(target=run_client, args=(srv.ws_url, srv.cfg.token, jpegs, args.fps, args.seconds,
                                                         outs[i])) for i in range(n)]
    rss, stop = [], threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.is_set():
            rss.append((round(time.monotonic() - t0, 2), round(rss_mib(), 1), srv.state.engine.active))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    msgs = [m for o in outs for m in o.get("messages", [])]
    comments = [m for m in msgs if m["type"] == "comment"]
    lags = np.asarray([m["lag_s"] for m in comments if m["lag_s"] is not None])
    skipped = sum(m["type"] == "skipped" for m in msgs)
    by_active: dict[int, list[float]] = {}
    for m in comments:
        by_active.setdefault(m["active"], []).append(m["step_ms"])
    res = {
        "sessions": n, "wall_s": round(time.monotonic() - t0, 2), "seconds": len(comments), "skipped": skipped,
        "errors": [o["error"] for o in outs if "error" in o] + [m for m in msgs if m["type"] == "error"],
        "lag_p50_s": round(float(np.percentile(lags, 50)), 3) if lags.size else None,
        "lag_p99_s": round(float(np.percentile(lags, 99)), 3) if lags.size else None,
        "lag_max_s": round(float(lags.max()), 3) if lags.size else None,
        "step_ms_by_active": {str(k): {"median": round(float(np.median(v)), 2), "p90": round(float(np.percentile(v, 90)), 2),
                                       "count": len(v)} for k, v in sorted(by_active.items())},
        "rss": rss,
    }
    res["held_real_time"] = bool(not res["errors"] and skipped == 0 and res["lag_p99_s"] is not None
                                 and res["lag_p99_s"] < 1.0)
    return res


def plot(result: dict, path: str) -> None:
    """Lag vs sessions, step time vs sessions in the step, RSS over time."""
    fig, (a, b, c) = figures.subplots(1, 3, figsize=(15, 4))
    runs = result["runs"]
    ns = [r["sessions"] for r in runs]
    a.plot(ns, [r["lag_p50_s"] for r in runs], "o-", label="p50")
    a.plot(ns, [r["lag_p99_s"] for r in runs], "s-", label="p99")
    a.axhline(1.0, color="grey", ls=":", lw=1)
    a.set(xlabel="concurrent sessions", ylabel="lag behind real time (s)",
          title=f"{result['preset']}: lag ({result['seconds']} s per run)")
    a.legend()
    steps: dict[int, list[float]] = {}
    for r in runs:
        for k, v in r["step_ms_by_active"].items():
            steps.setdefault(int(k), []).append(v["median"])
    ks = sorted(steps)
    b.plot(ks, [float(np.median(steps[k])) for k in ks], "o-")
    b.set(xlabel="sessions in the step", ylabel="step time, median (ms)", title="step time vs active sessions")
    b.set_ylim(bottom=0)
    offset = 0.0
    for r in runs:
        t = [offset + x[0] for x in r["rss"]]
        c.plot(t, [x[1] for x in r["rss"]], label=f"N={r['sessions']}")
        offset = t[-1] + 1 if t else offset
    c.set(xlabel="time (s, runs back to back)", ylabel="RSS (MiB)", title="process memory")
    c.legend(fontsize=8)
    figures.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.bench_serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "100m", "3b", "7b"), default="tiny")
    ap.add_argument("--sessions", default="1,2,4", help="comma list of concurrent session counts (1,2,4)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds each run streams (30)")
    ap.add_argument("--fps", type=int, default=2)
    ap.add_argument("--frame", default="112x112", help="HxW the server resizes frames to (112x112)")
    ap.add_argument("--client-frame", default="240x320", help="HxW of the JPEGs the clients send (240x320)")
    ap.add_argument("--vision-window", type=int, default=16)
    ap.add_argument("--text-sink", type=int, default=512)
    ap.add_argument("--text-window", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-wait", type=float, default=0.5)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.sessions.split(",") if x]
        frame = tuple(int(x) for x in args.frame.lower().split("x"))
        client_frame = tuple(int(x) for x in args.client_frame.lower().split("x"))
        assert counts and min(counts) >= 1 and len(frame) == 2 and len(client_frame) == 2
    except (ValueError, AssertionError):
        print("error: --sessions is a comma list of counts >= 1 and --frame/--client-frame are HxW.", file=sys.stderr)
        return 2
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    cfg = ModelConfig.preset(args.preset, dtype=dtype)
    server_cfg = ServerConfig(token="bench-token-0123456789", max_sessions=max(counts), sessions_per_client=max(counts),
                              fps=args.fps, frame_hw=frame, batch_wait_s=args.batch_wait)
    scfg = StreamConfig(vision_window=args.vision_window, text_sink=args.text_sink, text_window=args.text_window,
                        max_new_tokens=args.max_new_tokens, vision_tokens=server_cfg.vision_tokens,
                        question_tokens=16, answer_tokens=16)
    params = random_params(cfg, args.seed, jnp.dtype(dtype))
    st = Streamer(cfg, params, bench_tokenizer(cfg), scfg, sampling=SamplingConfig(), batch=max(counts),
                  seed=args.seed)
    device = jax.devices()[0]
    result = {"preset": args.preset, "params": count_params(params), "dtype": dtype,
              "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "host": platform.node(),
              "cpu_count": os.cpu_count(), "fps": args.fps, "frame": list(frame), "seconds": args.seconds,
              "vision_tokens_per_second": server_cfg.vision_tokens, "stream_config": scfg.__dict__,
              "command": " ".join(["python -m experiments.bench_serve"] + (argv or sys.argv[1:])), "runs": []}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_serve_{args.preset}")
    jpegs = synthetic_jpegs(client_frame)
    t = time.monotonic()
    with ThreadedServer(server_cfg, st) as srv:
        result["startup_s"] = round(time.monotonic() - t, 1)
        result["load_before"] = os.getloadavg()
        print(f"{args.preset}: {result['params'] / 1e6:.1f}M params, server up in {result['startup_s']} s",
              file=sys.stderr, flush=True)
        for n in counts:
            r = run_load(srv, n, args, jpegs)
            result["runs"].append(r)
            steps = ", ".join(f"{k}: {v['median']} ms" for k, v in r["step_ms_by_active"].items())
            print(f"N={n}: {r['seconds']} s commentated, {r['skipped']} skipped, lag p50 {r['lag_p50_s']} s, "
                  f"p99 {r['lag_p99_s']} s, step by active [{steps}], RSS {r['rss'][-1][1] if r['rss'] else '?'} MiB"
                  f"{', errors: ' + str(r['errors'][:2]) if r['errors'] else ''}", file=sys.stderr, flush=True)
            with open(stem + ".json", "w") as f:  # rewritten after each run, so an interrupted run keeps the rest
                json.dump(result, f)
    result["load_after"] = os.getloadavg()
    result["held_real_time"] = max([r["sessions"] for r in result["runs"] if r["held_real_time"]], default=0)
    with open(stem + ".json", "w") as f:
        json.dump(result, f)
    plot(result, stem + ".png")
    print(f"held in real time: {result['held_real_time']} sessions; wrote {stem}.json and {stem}.png",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
