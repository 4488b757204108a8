"""Training throughput: tokens/s of the compiled train step, and model FLOPs utilisation on a GPU.

    python -m experiments.bench_train                  # CPU: the demo's model and shapes, and tiny on 24-s chunks
    python -m experiments.bench_train --gpu            # GPU: a 7B-shaped model with fewer layers, bf16

Batches are built with the real sample builder and collate (synthetic words, random pixels), so the
step sees the shapes training sees; data loading is not timed. Results go to
docs/figures/bench_train_{cpu,gpu}.json (rows of the same name are replaced), with a PNG of tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

# Dense bf16 peak FLOP/s by device kind (H100/H200 SXM: 989 TFLOP/s without sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _peak(device_kind: str) -> float | None:
    for k, v in PEAK_FLOPS.items():
        if k in device_kind:
            return v
    return None


def model_flops_per_step(cfg, batch: dict, trainable_vision: bool) -> float:
    """Model FLOPs of one train step: 6 * params * tokens for the decoder (+ attention), 2x/6x for vision.

    Counts matmuls only; remat's recomputation is not counted (it is overhead, not model work).
    """
    t, v = cfg.text, cfg.vision
    d, layers = t.hidden_size, t.num_hidden_layers
    kv = t.num_key_value_heads * t.head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * t.intermediate_size  # q, o, k, v, gate/up/down
    head = d * t.vocab_size
    tokens = float(batch["attention_mask"].sum())
    lens = batch["attention_mask"].sum(axis=1).astype(np.float64)
    attn = sum(2 * 2 * layers * d * (n * n / 2) for n in lens)  # QK^T and PV over the causal half
    text = 6 * (layers * per_layer + head) * tokens + 3 * attn
    patches = float(np.prod(batch["pixel_values"].shape[:2]))
    vh = v.hidden_size
    vblock = 4 * vh * vh + 3 * vh * v.intermediate_size
    vis = 2 * (v.depth * vblock + v.patch_dim * vh) * patches + 2 * (4 * vh) ** 2 * patches / 4
    return text + vis * (3 if trainable_vision else 1)


def make_batch(cfg, rows: int, rounds: int, grid_hw: tuple[int, int], words_per_round: int, seed: int = 0,
               text_tokens: int = 512):
    """A collated batch: rows of `rounds` seconds, previous text truncated to text_tokens + text_tokens."""
    from svlm_jax.data.chunker import Chunk
    from svlm_jax.data.sample import BatchShapes, SampleConfig, build_sample, collate, geometric_buckets
    from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

    vocab = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(200)]  # one token each
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(vocab, cfg))
    rng = np.random.default_rng(seed)
    grid = np.array([[1, *grid_hw]])
    samples = []
    for _ in range(rows):
        chunk = Chunk(video="bench", start=600.0, previous=" ".join(rng.choice(vocab, 1200)),
                      rounds=tuple(tuple(rng.choice(vocab, words_per_round)) for _ in range(rounds)))
        px = rng.standard_normal((rounds * grid_hw[0] * grid_hw[1], cfg.vision.patch_dim)).astype(np.float32)
        scfg = SampleConfig(text_sink=text_tokens, text_window=text_tokens)
        samples.append(build_sample(chunk, tok, cfg, scfg, vision=(px, grid)))
    return collate(samples, rows, cfg, pad_id=tok.endoftext, shapes=BatchShapes(seq=geometric_buckets(256, 1 << 16, 64)))


def bench(name: str, cfg, *, rows: int, rounds: int, grid_hw, words: int, steps: int, remat: bool,
          frozen: tuple[str, ...], fsdp: int = 1, text_tokens: int = 512) -> dict:
    """Compile and time the train step on one batch; returns (and prints) a JSON-ready record."""
    import jax

    from svlm_jax import init_params, param_shapes
    from svlm_jax.train.optim import OptimConfig
    from svlm_jax.train.sharding import make_mesh, shard_batch
    from svlm_jax.train.step import StepConfig, Trainer

    batch = make_batch(cfg, rows, rounds, grid_hw, words, text_tokens=text_tokens)
    mesh = make_mesh(fsdp=fsdp)
    trainer = Trainer(cfg, OptimConfig(lr=1e-5, total_steps=1000, frozen=frozen), mesh, param_shapes(cfg),
                      StepConfig(remat=remat))
    state = trainer.init(init_params(cfg, jax.random.key(0)))
    dev = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, dev)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, dev)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = int(batch["attention_mask"].sum())
    flops = model_flops_per_step(cfg, batch, trainable_vision=not trainer.stop_vision_grad)
    kind = jax.devices()[0].device_kind
    peak = _peak(kind)
    out = {"name": name, "device": kind, "devices": jax.device_count(), "rows": rows,
           "seq_len": int(batch["input_ids"].shape[1]), "tokens_per_step": tokens,
           "vision_patches_per_row": int(batch["pixel_values"].shape[1]), "dtype": cfg.dtype, "remat": remat,
           "frozen": list(frozen), "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
           "step_s_min": round(min(times), 4), "tokens_per_s": round(tokens / step_s, 1),
           "model_tflops_per_step": round(flops / 1e12, 4), "achieved_tflops": round(flops / step_s / 1e12, 4),
           "mfu": None if peak is None else round(flops / step_s / (peak * jax.device_count()), 4),
           "finite": bool(m["finite"]), "host": platform.node(), "cpus": os.cpu_count(),
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(out))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="benchmark the 7B-shaped model (needs a GPU)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the 7B-shaped model")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the compile")
    p.add_argument("--attention", choices=("einsum", "xla", "cudnn"), default="einsum",
                   help="decoder attention kernel of the 7B-shaped model (ModelConfig.attention)")
    p.add_argument("--out", help="JSON file (default docs/figures/bench_train_cpu.json, or _gpu.json with --gpu)")
    args = p.parse_args(argv)
    args.out = args.out or f"docs/figures/bench_train_{'gpu' if args.gpu else 'cpu'}.json"
    import jax

    from svlm_jax import ModelConfig, VisionConfig
    from svlm_jax.config import TextConfig

    results = []
    if not args.gpu:
        from experiments.train import demo_model_config

        # The demo's shapes: 8 rows of 8-s chunks at 56x56 (4 vision tokens per second), float32, all trained.
        results.append(bench("demo-cpu-8s", demo_model_config(), rows=8, rounds=8, grid_hw=(4, 4), words=2,
                             steps=args.steps, remat=True, frozen=(), text_tokens=32))
        # The tiny preset on reference-length 24-s chunks, vision frozen as in the reference recipe.
        results.append(bench("tiny-cpu-24s", ModelConfig.tiny(), rows=4, rounds=24, grid_hw=(4, 4), words=2,
                             steps=args.steps, remat=True, frozen=("visual",)))
    else:
        if jax.devices()[0].platform != "gpu":
            raise SystemExit("--gpu needs a GPU; jax sees only " + jax.devices()[0].platform)
        base = ModelConfig.qwen25vl_7b()
        cfg = base.replace(dtype="bfloat16", text=TextConfig(num_hidden_layers=args.layers),
                           vision=VisionConfig(depth=4, fullatt_block_indexes=(3,)), attention=args.attention)
        # A 24-s chunk at 360p-like frames (20 x 28 patches: 140 merged tokens per second).
        for rows in (1, 2):
            results.append(bench(f"7b-shape-{args.layers}L-bf16-b{rows}-{args.attention}", cfg, rows=rows, rounds=24,
                                 grid_hw=(20, 28), words=3, steps=args.steps, remat=True, frozen=("visual",)))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    old = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    names = {r["name"] for r in results}
    rows = [r for r in old if r["name"] not in names] + results
    with open(args.out + ".part", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(args.out + ".part", args.out)
    _plot(rows, args.out.replace(".json", ".png"))
    return 0


def _plot(rows, path: str) -> None:
    from svlm_jax import figures

    fig, ax = figures.subplots(figsize=(7, 3 + 0.3 * len(rows)))
    names = [f"{r['name']} ({r['device']})" for r in rows]
    ax.barh(names, [r["tokens_per_s"] for r in rows])
    for i, r in enumerate(rows):
        label = f"{r['tokens_per_s']:.0f} tok/s" + (f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else "")
        ax.text(r["tokens_per_s"], i, " " + label, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens / s (compiled step, data loading excluded)")
    figures.save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
