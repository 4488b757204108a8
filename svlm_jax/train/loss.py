"""The training forward pass and the masked cross-entropy.

`batch_hidden` runs the VLM on a collated batch (see `data.sample.collate`): each row's vision is
encoded on its own (vmap over rows, so rows can be sharded across devices) and spliced in at that
row's `<|video_pad|>` tokens. The loss is computed from the hidden states in sequence chunks, so the
[B, T, V] logits of a large vocabulary never exist all at once.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from svlm_jax.config import ModelConfig
from svlm_jax.model import Qwen25VL, causal_mask, splice

Params = dict[str, Any]
VISION_META = ("window_index", "reverse_index", "rot_pos", "win_idx", "win_valid", "full_idx", "full_valid")


def batch_hidden(cfg: ModelConfig, params: Params, batch: dict[str, jax.Array], *, remat: bool = True,
                 stop_vision_grad: bool = True, attn_chunk: int | None = 1024,
                 constrain: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Final normed hidden states [B, T, D] for a collated batch.

    stop_vision_grad: the vision tower is frozen, so its backward pass is skipped entirely.
    attn_chunk: query rows per attention block (memory; the result is the same).
    constrain: optional sharding constraint applied to the [B, T, D] activations.
    """
    model = Qwen25VL(cfg, remat=remat, attn_q_chunk=attn_chunk)
    ids = batch["input_ids"]  # [B, T]

    def encode(px, meta):  # one row: [N, 1176] -> [N/4, D]
        return nn.apply(lambda m: m.encode_vision(px, meta), model)({"params": params})

    meta = {k: batch[k] for k in VISION_META}
    feats = jax.vmap(encode)(batch["pixel_values"], meta)  # [B, N/4, D]
    if stop_vision_grad:
        feats = jax.lax.stop_gradient(feats)

    def body(m: Qwen25VL):
        x = m.embed(ids)  # [B, T, D]
        x = jax.vmap(lambda xb, ib, fb: splice(xb[None], ib[None], cfg.video_token_id, fb)[0])(x, ids, feats)
        if constrain is not None:
            x = constrain(x)
        positions = jnp.moveaxis(batch["positions"], 1, 0)  # [3, B, T]
        hidden, _ = m.decode(x, positions, causal_mask(batch["attention_mask"]))
        return hidden

    return nn.apply(body, model)({"params": params})


def _head_logits(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """The model's own LM head on hidden [B, C, D] -> logits [B, C, V] float32."""
    return nn.apply(lambda m: m.logits(hidden), Qwen25VL(cfg))({"params": params})


def masked_cross_entropy(cfg: ModelConfig, params: Params, hidden: jax.Array, targets: jax.Array,
                         mask: jax.Array, *, chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    """(sum of token cross-entropies, number of labelled tokens) over hidden [B, T, D].

    Logits are built `chunk` positions at a time and recomputed in the backward pass, so peak
    memory is [B, chunk, V] rather than [B, T, V].
    """
    b, t, d = hidden.shape
    chunk = min(chunk, t)
    pad = -t % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    n = hidden.shape[1] // chunk
    hs = jnp.moveaxis(hidden.reshape(b, n, chunk, d), 1, 0)  # [n, B, C, D]
    ts = jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0)  # [n, B, C]
    ms = jnp.moveaxis(mask.reshape(b, n, chunk), 1, 0).astype(jnp.float32)

    @jax.checkpoint
    def piece(h, tg, m):
        logits = _head_logits(cfg, params, h)  # [B, C, V] f32
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, tg)  # [B, C]
        return jnp.sum(ce * m)

    def step(total, xs):
        return total + piece(*xs), None

    total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (hs, ts, ms))
    return total, jnp.sum(ms)


def loss_sum(cfg: ModelConfig, params: Params, batch: dict[str, jax.Array], *, remat: bool = True,
             stop_vision_grad: bool = True, ce_chunk: int = 1024, attn_chunk: int | None = 1024,
             constrain: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """(summed cross-entropy over labelled tokens, labelled-token count) for one batch."""
    hidden = batch_hidden(cfg, params, batch, remat=remat, stop_vision_grad=stop_vision_grad, attn_chunk=attn_chunk,
                          constrain=constrain)
    return masked_cross_entropy(cfg, params, hidden, batch["targets"], batch["loss_mask"], chunk=ce_chunk)
