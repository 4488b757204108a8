"""Training activation memory against sequence length: dense attention against query chunks.

    python -m experiments.bench_attention_memory [--layers 2] [--seq 2048,4096,8192,16384,24576] [--chunk 1024]

Compiles, but never runs, the forward and backward pass of a 7B-shaped decoder: 28 heads of 128, 4 KV
heads, bf16 compute over fp32 params, every layer rematerialised, one sequence. It then reads XLA's
buffer assignment: the temp bytes are what the step needs besides its inputs and outputs (params,
gradients). Since nothing runs, sizes that need an H100 can be measured on a laptop; the absolute bytes
are the compiling backend's (XLA's CPU backend computes bf16 matmuls in fp32), so compare the two curves,
not a GPU's memory. A 24-s chunk at the reference's 720p budget is about 18k vision tokens plus its
text. Writes <out>.json and <out>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from svlm_jax import ModelConfig, figures, param_shapes
from svlm_jax.config import TextConfig
from svlm_jax.model import Qwen25VL, causal_mask


def decoder_config(layers: int) -> ModelConfig:
    """The 7B preset with `layers` decoder layers, bf16 compute."""
    c = ModelConfig.preset("7b")
    t = c.text
    text = TextConfig(**{**{f: getattr(t, f) for f in t.__dataclass_fields__}, "num_hidden_layers": layers})
    return c.replace(text=text, dtype="bfloat16")


def temp_bytes(cfg: ModelConfig, seq: int, chunk: int | None) -> tuple[int, float]:
    """(XLA temp bytes, compile seconds) of grad(sum(decoder(x))) for one sequence of `seq` tokens."""
    text_params = param_shapes(cfg)["text"]
    model = Qwen25VL(cfg, remat=True, attn_q_chunk=chunk)

    def loss(tp, ids, positions, am):
        def body(m):
            hidden, _ = m.decode(m.embed(ids), positions, causal_mask(am))
            return jnp.sum(hidden.astype(jnp.float32))

        return nn.apply(body, model)({"params": {"text": tp}})

    ids = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    positions = jax.ShapeDtypeStruct((3, 1, seq), jnp.float32)
    t0 = time.time()
    compiled = jax.jit(jax.grad(loss)).lower(text_params, ids, positions, ids).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes), time.time() - t0


def plot(rows: list[dict], path: str) -> None:
    fig, ax = figures.subplots(figsize=(7, 4))
    for name in sorted({r["attention"] for r in rows}):
        pts = sorted((r["seq"], r["temp_gib"]) for r in rows if r["attention"] == name)
        ax.plot(*zip(*pts), "o-", label=name)
    seqs = sorted({r["seq"] for r in rows})
    heads = rows[0]["heads"]
    ax.plot(seqs, [heads * s * s * 4 / 2**30 for s in seqs], "--", color="grey",
            label=f"one layer's fp32 logits, {heads}·T²·4 B")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("activation temp (GiB)")
    ax.set_yscale("log", base=2)
    ax.set_title(f"7B-shaped decoder, {rows[0]['layers']} layers, bf16, remat, 1 sequence "
                 f"(XLA {rows[0]['backend'].upper()})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    figures.save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_attention_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="decoder layers (remat keeps one layer's activations live)")
    p.add_argument("--seq", default="2048,4096,8192,16384,24576", help="comma-separated sequence lengths")
    p.add_argument("--chunk", type=int, default=1024, help="query rows per attention block (StepConfig.attn_chunk)")
    p.add_argument("--out", default="docs/figures/attention_memory", help="output path without extension")
    a = p.parse_args(argv)
    cfg = decoder_config(a.layers)
    rows = []
    for seq in (int(s) for s in a.seq.split(",")):
        for name, chunk in (("dense", None), (f"chunks of {a.chunk}", a.chunk)):
            b, secs = temp_bytes(cfg, seq, chunk)
            rows.append({"seq": seq, "attention": name, "chunk": chunk, "layers": a.layers,
                         "heads": cfg.text.num_attention_heads,
                         "temp_bytes": b, "temp_gib": b / 2**30, "compile_s": round(secs, 1),
                         "backend": jax.default_backend()})
            print(f"seq {seq:6d}  {name:>15}: {b / 2**30:8.2f} GiB temp  (compiled in {secs:.1f} s)", flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".json.part"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, a.out + ".json")
    plot(rows, a.out + ".png")
    print(f"wrote {a.out}.json and {a.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
