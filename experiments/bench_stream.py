"""Streaming latency benchmark: random weights, a synthetic stream, per-second timings as JSON and a PNG.

    python -m experiments.bench_stream --preset tiny --seconds 3600 --modes streaming,full,recompute
    python -m experiments.bench_stream --preset 100m --seconds 600 --modes streaming
    python -m experiments.bench_stream --preset 7b --dtype bfloat16 --frame 720p --fps 2 --seconds 600   # GPU

Each mode streams the same random seconds through a fresh `Streamer` with the paper's defaults
(vision window 16 s, text sink 512, text window 512, 20 tokens per second, temperature 0.9, repetition
penalty 1.05) unless flags say otherwise. Per second it records the vision, prefill and decode
milliseconds and the tokens written. Mode `full` stops at --max-cache-gib. Second 0 includes compilation
and is left out of the summary. Writes <out>/bench_stream_<preset>[_tags].json and .png (tags name the
non-default --batch, --quant, --kv-dtype and --attention).

The streaming mode also reports the roofline: the bytes one decode step must read (decoder weights and
LM head once, plus the K/V of every cache slot of every stream), the rate achieved at the late median
ms/token, and this machine's read bandwidth measured in the same run (before and after), with the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax import ModelConfig, count_params, param_shapes
from svlm_jax.cache import CacheFull, StreamConfig, cache_bytes
from svlm_jax.stream import MODES, SamplingConfig, Streamer, synthetic_seconds
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from svlm_jax.video import MERGE_SIZE, PATCH_SIZE, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, smart_resize

FRAMES = {"720p": (720, 1280), "360p": (360, 640), "480p": (480, 854), "1080p": (1080, 1920)}
# The Qwen2.5 ids of the template's special tokens.
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                 "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                 "<|video_pad|>": 151656}


def random_params(cfg: ModelConfig, seed: int, dtype) -> dict:
    """Random parameters made leaf by leaf directly in `dtype` (a 7B model never exists in float32).

    Norm scales are ones, biases zeros, everything else normal(0, 0.02).
    """
    shapes = param_shapes(cfg)
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    make = jax.jit(lambda key, shape: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype),
                   static_argnums=1)
    leaves = []
    for i, (path, s) in enumerate(flat):
        name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
        if name == "scale":
            leaves.append(jnp.ones(s.shape, dtype))
        elif name == "bias":
            leaves.append(jnp.zeros(s.shape, dtype))
        else:
            leaves.append(make(jax.random.key(seed * 100003 + i), s.shape))
    return jax.tree_util.tree_unflatten(tree, leaves)


def bench_tokenizer(cfg: ModelConfig) -> ChatTokenizer:
    """A small word-level tokenizer whose special ids are the model's (Qwen's ids for the real presets)."""
    tiny = ModelConfig.tiny()
    if cfg.video_token_id == tiny.video_token_id and cfg.text.vocab_size == tiny.text.vocab_size:
        return ChatTokenizer.from_tokenizer(word_level_tokenizer([], cfg))
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from svlm_jax.tokenizer import _WORD_PATTERN

    base = word_level_tokenizer([], tiny)
    specials = set(QWEN_SPECIALS) | {"<|im_start|>"}
    vocab = {w: i for w, i in base.get_vocab().items() if w not in specials and not w.startswith("<|")}
    vocab.update(QWEN_SPECIALS)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    return ChatTokenizer.from_tokenizer(tok)


def decode_weight_bytes(cfg: ModelConfig, params) -> int:
    """Bytes of parameters one decode step reads: the decoder layers, the final norm and the LM head.

    The vision tower is not run while decoding, and the input embedding is gathered one row at a time, so
    neither counts, except that a tied embedding is the LM head and is read whole.
    """
    from svlm_jax.quant import weight_bytes

    text = {k: v for k, v in params["text"].items() if k != "embed_tokens"}
    head = params["text"]["embed_tokens"] if cfg.text.tie_word_embeddings else params["lm_head"]
    return weight_bytes(text) + weight_bytes(head)


def kv_bytes_per_slot(cfg: ModelConfig, dtype) -> int:
    """K and V bytes of one cache slot over all layers."""
    t = cfg.text
    return 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * jnp.dtype(dtype).itemsize


def read_bandwidth(mib: int = 512, repeats: int = 5) -> dict:
    """This machine's read bandwidth in GB/s, measured two ways on arrays far larger than the caches.

    sum: a jitted reduction over `mib` MiB of float32; matvec: a [1, D] x [D, N] product over the same
    bytes, the kernel a decode step is made of. Best of `repeats` each.
    """
    n = mib * 2**20 // 4
    x = jnp.ones((n,), jnp.float32)
    w = x.reshape(4096, -1)
    v = jnp.ones((1, 4096), jnp.float32)
    out = {}
    for name, fn, args in (("sum", jax.jit(jnp.sum), (x,)), ("matvec", jax.jit(jnp.dot), (v, w))):
        jax.block_until_ready(fn(*args))
        best = min(_timed(fn, args) for _ in range(repeats))
        out[name + "_gbs"] = round(n * 4 / best / 1e9, 3)
    out["gbs"] = max(out["sum_gbs"], out["matvec_gbs"])
    out["mib"] = mib
    del x, w
    return out


def _timed(fn, args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def roofline(cfg, params, scfg, cache_dtype, batch: int, ms_per_token: float | None, bandwidth: dict) -> dict:
    """Bytes one decode step must read (weights once, plus every stream's K/V) and the achieved rate.

    kv_slots_read: the cache slots attention reads per stream (all S: empty slots are masked, not skipped).
    """
    w = decode_weight_bytes(cfg, params)
    kv = scfg.layout.size * kv_bytes_per_slot(cfg, cache_dtype or cfg.compute_dtype) * batch
    out = {"weight_bytes": w, "kv_bytes": kv, "bytes_per_step": w + kv, "kv_slots_read": scfg.layout.size,
           "batch": batch, "bandwidth": bandwidth}
    if ms_per_token:
        out["achieved_gbs"] = round((w + kv) / (ms_per_token * 1e-3) / 1e9, 3)
        out["fraction_of_measured"] = round(out["achieved_gbs"] / bandwidth["gbs"], 3) if bandwidth else None
    return out


def grid_of(args) -> tuple[int, int]:
    """Patch grid (h, w) of a frame: --grid in patches, or --frame in pixels through smart_resize."""
    if args.grid:
        h, w = (int(x) for x in args.grid.lower().split("x"))
        return h, w
    hw = FRAMES.get(args.frame) or tuple(int(x) for x in args.frame.lower().split("x"))
    h, w = smart_resize(hw[0], hw[1], PATCH_SIZE * MERGE_SIZE, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    return h // PATCH_SIZE, w // PATCH_SIZE


def run_mode(mode: str, cfg, params, tok, scfg, sampling, args, grid) -> dict:
    """Stream args.seconds synthetic seconds in `mode`; per-second timings as lists."""
    st = Streamer(cfg, params, tok, scfg, sampling=sampling, seed=args.seed, mode=mode, batch=args.batch,
                  rotate_keys=getattr(args, "rotate_keys", "once"),
                  previous_text=" ".join(["red ball"] * 400) if args.previous_text else None,
                  max_cache_bytes=int(args.max_cache_gib * 2**30), cache_dtype=args.kv_dtype)
    rec = {k: [] for k in ("second", "vision_ms", "prefill_ms", "decode_ms", "tokens", "total_ms", "cpu_ms",
                           "slots")}
    stopped = None
    t_mode = time.perf_counter()
    secs = synthetic_seconds(cfg, grid, fps=args.fps, seconds=args.seconds, seed=args.seed)
    for i, sec in enumerate(secs):
        if i == 1:  # the budget counts from the end of the first, compiling second
            t_mode = time.perf_counter()
        if args.mode_budget_s and time.perf_counter() - t_mode > args.mode_budget_s:
            stopped = f"time budget of {args.mode_budget_s:g} s reached at second {i}"
            break
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            cs = st.step([sec] * args.batch)
            total, cpu = 1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)
            c = max(cs, key=lambda x: x.n_tokens)  # the decode loop runs until the longest turn ends
        except CacheFull as e:
            stopped = f"cache full at second {i}: {e}"
            break
        for k, v in (("second", i), ("vision_ms", c.vision_ms), ("prefill_ms", c.prefill_ms),
                     ("decode_ms", c.decode_ms), ("tokens", c.n_tokens), ("total_ms", total), ("cpu_ms", cpu),
                     ("slots", st.scfg.layout.size)):
            rec[k].append(round(v, 3) if isinstance(v, float) else v)
        if args.progress and (i + 1) % args.progress == 0:
            print(f"  {mode}: second {i + 1}, {total:.1f} ms", file=sys.stderr, flush=True)
    rec["stopped"] = stopped
    rec["cache_bytes"] = st.cache_bytes()
    rec["summary"] = summarize(rec)
    return rec


def _window(rec, lo, hi):
    return [i for i, s in enumerate(rec["second"]) if lo <= s < hi]


def summarize(rec) -> dict:
    """Medians over an early window (seconds 60-159) and the last 100 seconds, compile second excluded."""
    n = len(rec["second"])
    if n < 2:
        return {}
    out = {"seconds": n}
    early = _window(rec, 60, 160) or list(range(1, min(n, 101)))
    late = list(range(max(1, n - 100), n))
    for name, idx in (("early", early), ("late", late)):
        tot = np.median([rec["total_ms"][i] for i in idx])
        cpu = np.median([rec["cpu_ms"][i] for i in idx])
        dec = np.array([rec["decode_ms"][i] for i in idx])
        tokens = np.array([rec["tokens"][i] for i in idx])
        out[name] = {"from": rec["second"][idx[0]], "to": rec["second"][idx[-1]], "total_ms": float(tot),
                     "cpu_ms": float(cpu), "vision_ms": float(np.median([rec["vision_ms"][i] for i in idx])),
                     "prefill_ms": float(np.median([rec["prefill_ms"][i] for i in idx])),
                     "decode_ms": float(np.median(dec)),
                     "ms_per_token": float(np.median(dec / np.maximum(tokens, 1))),
                     "tokens_per_s": float(np.median(1e3 * tokens / np.maximum(dec, 1e-9)))}
    out["late_over_early"] = out["late"]["total_ms"] / out["early"]["total_ms"]
    for name, idx in (("early", early), ("late", late)):
        out[name]["p10_total_ms"] = float(np.percentile([rec["total_ms"][i] for i in idx], 10))
    # The trend over the whole run: a line through a statistic of 100-second windows, end over start. Wall
    # medians move with whatever else runs on the machine; CPU time and the 10th percentile much less.
    sec = np.asarray(rec["second"][1:])
    if sec.size >= 300:
        for name, key, stat in (("trend_cpu_median", "cpu_ms", np.median),
                                ("trend_wall_p10", "total_ms", lambda a: np.percentile(a, 10))):
            val = np.asarray(rec[key][1:])
            pts = [(sec[i:i + 100].mean(), stat(val[i:i + 100])) for i in range(0, sec.size - 99, 100)]
            slope, icpt = np.polyfit(*zip(*pts), 1)
            if icpt + slope * sec[0] > 0:  # a line is a poor model of a growing mode; skip nonsense fits
                out[name] = float((icpt + slope * sec[-1]) / (icpt + slope * sec[0]))
    # Process CPU time (all threads) per second: the work done, insensitive to sharing the machine.
    out["cpu_late_over_early"] = out["late"]["cpu_ms"] / out["early"]["cpu_ms"]
    return out


def plot(result: dict, path: str) -> None:
    """PNG: latency per second of video and decode ms per token against stream second, one line per mode."""
    from svlm_jax import figures

    fig, (ax1, ax2) = figures.subplots(1, 2, figsize=(13, 4.5))
    for mode, rec in result["modes"].items():
        s = np.asarray(rec["second"][1:])
        if s.size == 0:
            continue
        tot = np.asarray(rec["total_ms"][1:])
        per_tok = np.asarray(rec["decode_ms"][1:]) / np.maximum(np.asarray(rec["tokens"][1:]), 1)
        k = max(1, s.size // 200)  # rolling median over k seconds for readability
        med = lambda a: np.array([np.median(a[max(0, i - k + 1):i + 1]) for i in range(a.size)])  # noqa: E731
        line, = ax1.plot(s, med(tot), label=mode, lw=1.2)
        ax1.plot(s, tot, color=line.get_color(), alpha=0.15, lw=0.5)
        ax2.plot(s, med(per_tok), label=mode, lw=1.2, color=line.get_color())
    ax1.set(xlabel="stream second", ylabel="latency per second of video (ms)", yscale="log",
            title=f"{result['preset']} on {result['device']}: vision + prefill + decode")
    ax2.set(xlabel="stream second", ylabel="decode ms per generated token", yscale="log", title="decode")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    figures.save(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes <out>/bench_stream_<preset>.json and .png after every mode."""
    ap = argparse.ArgumentParser(prog="python -m experiments.bench_stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "100m", "3b", "7b"), default="tiny")
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--modes", default="streaming,full,recompute", help=f"comma list of {MODES}")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--frame", default="720p", help="frame size before smart_resize: 720p, 360p or HxW pixels")
    ap.add_argument("--grid", default=None, help="patch grid HxW instead of --frame (e.g. 8x8 for CPU runs)")
    ap.add_argument("--fps", type=int, default=2)
    ap.add_argument("--vision-window", type=int, default=16)
    ap.add_argument("--text-sink", type=int, default=512)
    ap.add_argument("--text-window", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--previous-text", action="store_true", help="start with 800 tokens of previous text")
    ap.add_argument("--max-cache-gib", type=float, default=4.0, help="memory cap of mode full")
    ap.add_argument("--mode-budget-s", type=float, default=0.0, help="stop a mode after this wall time, counted after the first (compiling) second (0 = off)")
    ap.add_argument("--batch", type=int, default=1, help="streams stepped together in one Streamer")
    ap.add_argument("--kv-dtype", choices=("float32", "bfloat16"), default=None, help="cache dtype (default: compute)")
    ap.add_argument("--quant", choices=("int8",), default=None, help="int8 weight-only decoder and LM head")
    ap.add_argument("--attention", choices=("einsum", "xla", "cudnn"), default="einsum",
                    help="decoder attention kernel (ModelConfig.attention)")
    ap.add_argument("--rotate-keys", choices=("once", "per_token"), default="once",
                    help="rotate the cached keys once per turn (default) or at every decode step")
    ap.add_argument("--layers", type=int, default=None, help="override the decoder's layer count (e.g. a 7B-shaped "
                    "model with 2 layers on a CPU)")
    ap.add_argument("--bandwidth-mib", type=int, default=512, help="array size of the read-bandwidth probe (0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", type=int, default=0, help="print every N seconds")
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {MODES}")
    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    cfg = ModelConfig.preset(args.preset, dtype=dtype).replace(attention=args.attention)
    if args.layers:
        import dataclasses

        cfg = cfg.replace(text=dataclasses.replace(cfg.text, num_hidden_layers=args.layers))
    grid = grid_of(args)
    n_vision = (-(-args.fps // 2)) * grid[0] * grid[1] // 4
    scfg = StreamConfig(vision_window=args.vision_window, text_sink=args.text_sink, text_window=args.text_window,
                        max_new_tokens=args.max_new_tokens, vision_tokens=n_vision)
    sampling = SamplingConfig()
    t0 = time.perf_counter()
    params = random_params(cfg, args.seed, jnp.dtype(dtype))
    if args.quant:
        from svlm_jax.quant import quantize_params

        params = quantize_params(cfg, params, args.quant)
    jax.block_until_ready(params)
    bandwidth = read_bandwidth(args.bandwidth_mib) if args.bandwidth_mib else {}
    tok = bench_tokenizer(cfg)
    device = jax.devices()[0]
    result = {
        "preset": args.preset, "params": count_params(params), "dtype": dtype,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "host": platform.node(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "grid_patches": list(grid), "fps": args.fps,
        "vision_tokens_per_second": n_vision, "stream_config": scfg.__dict__,
        "cache_bytes_streaming": cache_bytes(cfg, scfg), "command": " ".join(["python -m experiments.bench_stream"]
                                                                            + (argv or sys.argv[1:])),
        "init_s": round(time.perf_counter() - t0, 2), "batch": args.batch, "kv_dtype": args.kv_dtype,
        "quant": args.quant, "attention": args.attention, "rotate_keys": args.rotate_keys, "layers": args.layers,
        "load_avg": os.getloadavg(), "modes": {},
    }
    print(f"{args.preset}: {result['params'] / 1e6:.1f}M params, {dtype}, {result['device']}, grid {grid}, "
          f"{n_vision} vision tokens/s", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    tags = [f"{args.layers}L" if args.layers else "", f"b{args.batch}" if args.batch != 1 else "", args.quant or "",
            "rotpertoken" if args.rotate_keys != "once" else "",
            f"kv{args.kv_dtype}" if args.kv_dtype else "", args.attention if args.attention != "einsum" else ""]
    stem = os.path.join(args.out, "_".join(["bench_stream", args.preset] + [t for t in tags if t]))
    for mode in modes:
        t = time.perf_counter()
        result["modes"][mode] = rec = run_mode(mode, cfg, params, tok, scfg, sampling, args, grid)
        s = rec["summary"]
        if mode == "streaming":
            if args.bandwidth_mib:  # measured again after the run: the machine's state at both ends
                again = read_bandwidth(args.bandwidth_mib)
                bandwidth = {k: max(v, again[k]) for k, v in bandwidth.items()}
            rec["roofline"] = roofline(cfg, params, scfg, args.kv_dtype, args.batch,
                                       s["late"]["ms_per_token"] if s else None, bandwidth)
        msg = (f"{mode}: {len(rec['second'])} s in {time.perf_counter() - t:.0f} s wall"
               + (f"; stopped: {rec['stopped']}" if rec["stopped"] else ""))
        if s:
            msg += (f"; median ms/s {s['early']['total_ms']:.2f} (s {s['early']['from']}-{s['early']['to']}) -> "
                    f"{s['late']['total_ms']:.2f} (s {s['late']['from']}-{s['late']['to']}), "
                    f"ratio {s['late_over_early']:.3f}, CPU time {s['cpu_late_over_early']:.3f}; trend over the run: "
                    f"CPU median {s.get('trend_cpu_median', float('nan')):.3f}, wall p10 "
                    f"{s.get('trend_wall_p10', float('nan')):.3f}; decode {s['late']['ms_per_token']:.3f} ms/token")
        r = rec.get("roofline")
        if r and "achieved_gbs" in r:
            msg += (f"; reads {r['bytes_per_step'] / 1e6:.1f} MB/token ({r['weight_bytes'] / 1e6:.1f} weights + "
                    f"{r['kv_bytes'] / 1e6:.1f} K/V) at {r['achieved_gbs']:.2f} GB/s"
                    + (f" = {r['fraction_of_measured']:.0%} of the measured {r['bandwidth']['gbs']:.2f} GB/s"
                       if r.get("fraction_of_measured") else ""))
        print(msg, file=sys.stderr, flush=True)
        with open(stem + ".json", "w") as f:  # rewritten after each mode, so a long run loses nothing
            json.dump(result, f)
        plot(result, stem + ".png")
    print(f"wrote {stem}.json and {stem}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
