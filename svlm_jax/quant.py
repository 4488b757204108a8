"""Weight-only int8 quantization of a parameter tree (per output channel, symmetric).

A quantized `Linear` keeps `kernel_int8` [in, out] int8 and `kernel_scale` [out] float32 in place of its
`kernel`; the tied embedding, which is also the LM head, keeps `embedding_int8` [V, D] and
`embedding_scale` [V]. `layers.Linear` and `layers.Embed` read either form, so the same model code runs
float and quantized trees. Biases and norms stay as they are.

w ≈ q * scale with scale = max|w| / 127 over the input axis, q = round(w / scale) in [-127, 127]: the error
of one weight is at most scale / 2.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from svlm_jax.config import ModelConfig

Params = dict[str, Any]
QUANT_MODES = (None, "int8")


@jax.jit
def quantize_kernel(w):
    """w [in, out] -> (q [in, out] int8, scale [out] float32), symmetric per output column."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=0) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero column quantizes to zeros with any scale
    return jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8), scale


def dequantize_kernel(q, scale):
    """(q [in, out] int8, scale [out]) -> [in, out] float32."""
    return q.astype(jnp.float32) * scale


def _quantize_linears(tree: Params) -> Params:
    out = {}
    for name, sub in tree.items():
        if isinstance(sub, dict):
            if "kernel" in sub and getattr(sub["kernel"], "ndim", 0) == 2:
                q, s = quantize_kernel(sub["kernel"])
                sub = {**{k: v for k, v in sub.items() if k != "kernel"}, "kernel_int8": q, "kernel_scale": s}
                out[name] = sub
            else:
                out[name] = _quantize_linears(sub)
        else:
            out[name] = sub
    return out


def quantize_params(cfg: ModelConfig, params: Params, mode: str | None = "int8", *, vision: bool = False) -> Params:
    """Quantize the decoder's linear layers and the LM head (and the vision tower with `vision`).

    params: a float tree of `cfg` (as `svlm_jax.load` returns). mode None returns params unchanged. The tied
    embedding is quantized per row because it is the LM head; an untied input embedding is only gathered
    from, so it stays float. Returns a new tree; the input is not modified.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES}, got {mode!r}.")
    if mode is None:
        return params
    if any(str(path[-1].key).endswith("_int8") for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]):
        raise ValueError("These params are already quantized; quantize a float tree once.")
    out = dict(params)
    text = dict(params["text"])
    layers = {k: _quantize_linears(v) for k, v in text.items() if k.startswith("layers_")}
    text.update(layers)
    if cfg.text.tie_word_embeddings:
        q, s = quantize_kernel(params["text"]["embed_tokens"]["embedding"].T)  # per row of [V, D]
        text["embed_tokens"] = {"embedding_int8": q.T, "embedding_scale": s}
    out["text"] = text
    if "lm_head" in params:
        out.update(_quantize_linears({"lm_head": params["lm_head"]}))
    if vision:
        out["visual"] = _quantize_linears(params["visual"])
    return out


def weight_bytes(params: Params) -> int:
    """Bytes of every array in a (float or quantized) tree."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params)))
