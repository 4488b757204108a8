"""Building blocks shared by the vision tower and the decoder: HF-ordered RMSNorm, SwiGLU, rotations."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """RMSNorm in Hugging Face's cast order: normalise in fp32, cast back, then scale.

    x: [..., D] -> [..., D] in x's dtype (promoted with the scale's dtype, as torch does).
    """

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * normed.astype(x.dtype)


class Linear(nn.Module):
    """A Linear layer, [..., in] -> [..., features], with an optional int8 weight-only kernel.

    Float params are `kernel` [in, out] (the transpose of torch's weight, fp32 at init) and `bias` [out],
    the names and maths of `nn.Dense`. A tree from `svlm_jax.quant.quantize_params` holds instead
    `kernel_int8` [in, out] int8 and `kernel_scale` [out] (per output channel, symmetric): the kernel is
    dequantized in the compute dtype inside the matmul, so only int8 bytes are read from memory where the
    backend fuses the conversion (XLA on GPU).
    """

    features: int
    use_bias: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        contract = (((x.ndim - 1,), (0,)), ((), ()))
        if self.has_variable("params", "kernel_int8"):
            q = self.get_variable("params", "kernel_int8")  # [in, out] int8
            scale = self.get_variable("params", "kernel_scale")  # [out]
            y = jax.lax.dot_general(x.astype(self.dtype), q.astype(self.dtype), contract) * scale.astype(self.dtype)
        else:
            kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), jnp.float32)
            y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), contract)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


def dense(features: int, name: str, *, bias: bool, dtype) -> Linear:
    """A `Linear` named `name` (params fp32 at init, kernel = torch weight transposed)."""
    return Linear(features, bias, dtype, name=name)


class Embed(nn.Module):
    """Token embedding [V, D] that doubles as the tied LM head, with an optional int8 table.

    Float param `embedding` [V, D] (the name and maths of `nn.Embed`); a quantized tree holds
    `embedding_int8` [V, D] int8 and `embedding_scale` [V] (per row, symmetric), dequantized on the fly.
    """

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self):
        if self.has_variable("params", "embedding_int8"):
            self.table = self.get_variable("params", "embedding_int8")
            self.scale = self.get_variable("params", "embedding_scale")
        else:
            self.table = self.param("embedding", nn.initializers.normal(0.02), (self.num_embeddings, self.features),
                                    jnp.float32)
            self.scale = None

    def __call__(self, ids):
        """ids [...] int -> [..., D] in the compute dtype."""
        rows = jnp.take(self.table, ids, axis=0).astype(self.dtype)
        return rows if self.scale is None else rows * jnp.take(self.scale, ids, axis=0)[..., None].astype(self.dtype)

    def attend(self, x):
        """x [..., D] -> logits [..., V] against the table (the tied head)."""
        y = jnp.dot(x.astype(self.dtype), self.table.astype(self.dtype).T)
        return y if self.scale is None else y * self.scale.astype(self.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); x: [..., D] -> [..., D]."""

    hidden: int
    intermediate: int
    bias: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        gate = dense(self.intermediate, "gate_proj", bias=self.bias, dtype=self.dtype)(x)
        up = dense(self.intermediate, "up_proj", bias=self.bias, dtype=self.dtype)(x)
        return dense(self.hidden, "down_proj", bias=self.bias, dtype=self.dtype)(nn.silu(gate) * up)


def rotate_half(x):
    """[..., 2h] -> [..., 2h]: (x1, x2) -> (-x2, x1), the non-interleaved rotation HF uses."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate x [..., D] by cos/sin broadcastable to it: x*cos + rotate_half(x)*sin."""
    return x * cos + rotate_half(x) * sin


def masked_softmax_attention(q, k, v, mask, scale: float):
    """Softmax attention with a boolean mask and fp32 softmax, cast back to q's dtype.

    q: [..., T, N, H], k/v: [..., S, N, H], mask: broadcastable to [..., N, T, S] -> [..., T, N, H].
    Rows with no visible key get a uniform average (as HF's additive finfo.min mask does), never NaN.
    """
    logits = jnp.einsum("...tnh,...snh->...nts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    return jnp.einsum("...nts,...snh->...tnh", probs, v)
