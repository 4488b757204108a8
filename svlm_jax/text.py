"""The Qwen2 decoder with M-RoPE, GQA and q/k/v biases.

One layer serves two callers:
  * full-sequence forward / training: keys are the tokens themselves, mask [B, T, T];
  * cached streaming: `LayerKV` carries the un-rotated cache K/V, the rotary tables of every slot,
    and the slots where this call's tokens are written. Keys are rotated at attention time with
    the slots' current positions, so eviction only has to renumber positions, never touch K.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from svlm_jax.config import TextConfig
from svlm_jax.layers import Embed, RMSNorm, SwiGLU, apply_rotary, dense


class LayerKV(NamedTuple):
    """One layer's cache view. k, v: [B, S, KV, hd] un-rotated (arrays, or `QuantKV`); cos, sin: [B, S, hd];
    slots: [B, T].

    k_rot: optionally, every slot's key already rotated at its position ([B, S, KV, hd], compute dtype). The
    decode loop rotates the cache once per second this way instead of once per token; the layer then rotates
    only the new tokens' keys, writes them into k_rot as well, and ignores cos/sin.
    """

    k: Any
    v: Any
    cos: Any
    sin: Any
    slots: Any
    k_rot: Any = None


class QuantKV(NamedTuple):
    """An int8 cache tensor: q [B, S, KV, hd] int8 and scale [B, S, KV] float32, one per slot and head
    (symmetric: value = q * scale)."""

    q: Any
    scale: Any


def quantize_heads(x):
    """x [..., hd] -> (int8 [..., hd], scale [...] float32): symmetric over the last axis."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=-1) / 127.0
    q = jnp.round(x / jnp.where(scale > 0, scale, 1.0)[..., None])
    return jnp.clip(q, -127, 127).astype(jnp.int8), scale


def read_cache(store, dtype):
    """A cache tensor (array or `QuantKV`) [B, S, KV, hd] -> its values in `dtype`."""
    if isinstance(store, QuantKV):
        return store.q.astype(dtype) * store.scale[..., None].astype(dtype)
    return store.astype(dtype)


def as_stored(store, new, dtype):
    """new [B, T, KV, hd] as the cache will give it back (rounded to its dtype, or quantized), in `dtype`."""
    if isinstance(store, QuantKV):
        q, scale = quantize_heads(new)
        return q.astype(dtype) * scale[..., None].astype(dtype)
    return new.astype(store.dtype).astype(dtype)


def write_cache(store, new, rows, slots):
    """Write new [B, T, KV, hd] into a cache tensor at slots [B, T] (quantized if the store is `QuantKV`)."""
    if isinstance(store, QuantKV):
        q, scale = quantize_heads(new)
        return QuantKV(store.q.at[rows, slots].set(q), store.scale.at[rows, slots].set(scale))
    return store.at[rows, slots].set(new.astype(store.dtype))


def _gqa_dense(q, k, v, mask, num_kv: int):
    b, t, n, h = q.shape
    qg = q.reshape(b, t, num_kv, n // num_kv, h)  # [B, T, KV, G, H]
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * h**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = nn.softmax(logits, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, h)


def _gqa(q, k, v, mask, num_kv: int, impl: str):
    if impl == "einsum":
        return _gqa_dense(q, k, v, mask, num_kv)
    # Same maths (fp32 logits and softmax, a fully masked row averages uniformly); "cudnn" fuses it on a GPU.
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None],
                                        implementation=impl)


def gqa_attention(q, k, v, mask, num_kv: int, q_chunk: int | None = None, impl: str = "einsum"):
    """Grouped-query attention. q [B,T,N,H], k/v [B,S,KV,H], mask [B,T,S] bool -> [B,T,N,H].

    Logits and softmax in fp32; probabilities cast back to q's dtype before the value product.
    q_chunk: when T > q_chunk, queries go q_chunk at a time and each chunk is recomputed in the backward
    pass, so only [q_chunk, S] logits exist at once instead of [T, S] (a 24-s chunk at 720p is ~20k
    tokens: 45 GB of fp32 logits per layer for the 7B). Every query row sees all S keys either way, so
    the result is the same.
    impl: "einsum", "xla" or "cudnn" (`ModelConfig.attention`).
    """
    b, t, n, h = q.shape
    if not q_chunk or t <= q_chunk:
        return _gqa(q, k, v, mask, num_kv, impl)
    nc = -(-t // q_chunk)
    pad = nc * q_chunk - t
    qs = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nc, q_chunk, n, h)
    ms = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, nc, q_chunk, mask.shape[-1])
    one = jax.checkpoint(lambda qc, mc: _gqa(qc, k, v, mc, num_kv, impl))
    out = jax.lax.map(lambda a: one(*a), (jnp.moveaxis(qs, 1, 0), jnp.moveaxis(ms, 1, 0)))  # [C, B, q, N, H]
    return jnp.moveaxis(out, 0, 1).reshape(b, nc * q_chunk, n, h)[:, :t]


class Attention(nn.Module):
    cfg: TextConfig
    dtype: Any = jnp.float32
    q_chunk: int | None = None
    impl: str = "einsum"

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv: LayerKV | None = None):
        """x [B,T,D], cos/sin [B,T,hd] (this call's tokens), mask [B,T,S] -> (y [B,T,D], (k, v) to cache,
        plus the updated k_rot when `kv.k_rot` is given)."""
        c = self.cfg
        b, t, _ = x.shape
        q = dense(c.num_attention_heads * c.head_dim, "q_proj", bias=True, dtype=self.dtype)(x)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj", bias=True, dtype=self.dtype)(x)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj", bias=True, dtype=self.dtype)(x)
        q = q.reshape(b, t, c.num_attention_heads, c.head_dim)  # [B, T, N, H]
        k = k.reshape(b, t, c.num_key_value_heads, c.head_dim)  # [B, T, KV, H]
        v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
        if kv is None:
            k_all, v_all, cos_k, sin_k = k, v, cos, sin
        else:
            rows = jnp.arange(b)[:, None]
            k_store, v_store = write_cache(kv.k, k, rows, kv.slots), write_cache(kv.v, v, rows, kv.slots)
            v_all = read_cache(v_store, self.dtype)  # [B, S, KV, H]
            cos_k, sin_k = kv.cos, kv.sin
        q_rot = apply_rotary(q, cos[:, :, None], sin[:, :, None])
        if kv is not None and kv.k_rot is not None:
            # Rotate the key as the cache holds it, so this equals rotating the cache at attention time.
            new_rot = apply_rotary(as_stored(kv.k, k, self.dtype), cos[:, :, None], sin[:, :, None])
            new_rot = new_rot.astype(kv.k_rot.dtype)
            k_rot = kv.k_rot.at[jnp.arange(b)[:, None], kv.slots].set(new_rot)
        else:
            k_all = k_all if kv is None else read_cache(k_store, self.dtype)
            k_rot = apply_rotary(k_all.astype(self.dtype), cos_k[:, :, None], sin_k[:, :, None])
        out = gqa_attention(q_rot, k_rot, v_all.astype(self.dtype), mask, c.num_key_value_heads, self.q_chunk,
                            self.impl)
        y = dense(c.hidden_size, "o_proj", bias=False, dtype=self.dtype)(out.reshape(b, t, -1))
        if kv is None:
            return y, (k_all, v_all)
        return y, ((k_store, v_store) if kv.k_rot is None else (k_store, v_store, k_rot))


class DecoderLayer(nn.Module):
    cfg: TextConfig
    dtype: Any = jnp.float32
    q_chunk: int | None = None
    impl: str = "einsum"

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv: LayerKV | None = None):
        c = self.cfg
        h, new_kv = Attention(c, self.dtype, self.q_chunk, self.impl, name="self_attn")(
            RMSNorm(c.rms_norm_eps, name="input_layernorm")(x), cos, sin, mask, kv)
        x = x + h
        h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x)
        return x + SwiGLU(c.hidden_size, c.intermediate_size, False, self.dtype, name="mlp")(h), new_kv


class TextDecoder(nn.Module):
    """Token embedding, the decoder stack, and the final norm.

    `remat` recomputes each layer in the backward pass (training memory); `q_chunk` bounds the attention
    logits to q_chunk query rows at a time (see `gqa_attention`).
    """

    cfg: TextConfig
    dtype: Any = jnp.float32
    remat: bool = False
    q_chunk: int | None = None
    impl: str = "einsum"

    def setup(self):
        c = self.cfg
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, self.dtype)
        layer_cls = nn.remat(DecoderLayer) if self.remat else DecoderLayer
        self.layers = [layer_cls(c, self.dtype, self.q_chunk, self.impl) for _ in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps)

    def embed(self, input_ids):
        """input_ids [B, T] int -> [B, T, D] in the compute dtype."""
        return self.embed_tokens(input_ids).astype(self.dtype)

    def attend(self, hidden):
        """Tied head: hidden [B, T, D] -> logits [B, T, V]."""
        return self.embed_tokens.attend(hidden)

    def __call__(self, x, cos, sin, mask, kv: list[LayerKV] | None = None):
        """x [B,T,D], cos/sin [B,T,hd], mask [B,T,S] -> (normed hidden [B,T,D], per-layer (k, v))."""
        new = []
        for i, layer in enumerate(self.layers):
            x, layer_kv = layer(x, cos, sin, mask, None if kv is None else kv[i])
            new.append(layer_kv)
        return self.norm(x), new
