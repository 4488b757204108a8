"""Building blocks shared by the vision tower and the decoder: HF-ordered RMSNorm, SwiGLU, rotations."""
from __future__ import annotations

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


def dense(features: int, name: str, *, bias: bool, dtype) -> nn.Dense:
    """A Linear layer whose kernel is the transpose of torch's (in, out) and whose params stay fp32 at init."""
    return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=nn.initializers.normal(0.02))


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
