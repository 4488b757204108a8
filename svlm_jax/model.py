"""The VLM: vision embeddings spliced into the token stream, the decoder, and the LM head.

`forward` is the public, HF-shaped entry point. Host-side work (M-RoPE positions, vision window
metadata, input checks) runs in numpy; the numeric work is one jitted function per input shape.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.layers import Linear
from svlm_jax.rope import get_rope_index, text_cos_sin
from svlm_jax.text import LayerKV, TextDecoder
from svlm_jax.vision import VisionTower, vision_metadata

Params = dict[str, Any]


class Qwen25VL(nn.Module):
    """Parameter tree: {'visual': ..., 'text': ..., 'lm_head': ... (untied only)}.

    Methods are meant for `nn.apply`; each is a pure function of the params.
    """

    cfg: ModelConfig
    remat: bool = False
    attn_q_chunk: int | None = None  # query rows per attention block in the decoder (None: all at once)

    def setup(self):
        c, dt = self.cfg, self.cfg.compute_dtype
        self.visual = VisionTower(c.vision, dt)
        self.text = TextDecoder(c.text, dt, self.remat, self.attn_q_chunk, c.attention)
        if not c.text.tie_word_embeddings:
            self.lm_head = Linear(c.text.vocab_size, False, dt)

    def encode_vision(self, pixel_values, meta):
        """pixel_values [N, patch_dim] -> [N/4, D] merged vision embeddings."""
        return self.visual(pixel_values, meta)

    def embed(self, input_ids):
        """input_ids [B, T] -> [B, T, D]."""
        return self.text.embed(input_ids)

    def decode(self, x, positions, mask, kv: list[LayerKV] | None = None):
        """x [B,T,D], positions [3,B,T], mask [B,T,S] -> (hidden [B,T,D], per-layer (k, v))."""
        cos, sin = text_cos_sin(positions, self.cfg.text, self.cfg.compute_dtype)
        return self.text(x, cos, sin, mask, kv)

    def decode_with_tables(self, x, cos, sin, mask, kv: list[LayerKV] | None = None):
        """Like `decode`, with precomputed rotary tables cos/sin [B, T, hd]."""
        return self.text(x, cos, sin, mask, kv)

    def logits(self, hidden):
        """hidden [B, T, D] -> logits [B, T, V] in float32."""
        if self.cfg.text.tie_word_embeddings:
            out = self.text.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, input_ids, positions, mask, pixel_values, meta):
        """Touches every parameter; used by `init_params`."""
        x = self.embed(input_ids)
        v = self.encode_vision(pixel_values, meta)
        x = x.at[:, : v.shape[0]].add(v[None].astype(x.dtype))
        hidden, _ = self.decode(x, positions, mask)
        return self.logits(hidden)


def splice(x, input_ids, token_id: int, feats):
    """Write vision features [M, D] into x [B, T, D] at the M positions where input_ids == token_id."""
    hit = input_ids == token_id  # [B, T]
    idx = jnp.clip(jnp.cumsum(hit.reshape(-1)) - 1, 0, feats.shape[0] - 1).reshape(hit.shape)
    return jnp.where(hit[..., None], feats[idx].astype(x.dtype), x)


def causal_mask(attention_mask):
    """attention_mask [B, T] (1 = real token) -> [B, T, T] bool: causal and key-padding."""
    t = attention_mask.shape[1]
    return jnp.tril(jnp.ones((t, t), bool))[None] & (attention_mask[:, None, :] > 0)


def _dummy_inputs(cfg: ModelConfig):
    grid = np.array([[1, cfg.vision.spatial_merge_size, cfg.vision.spatial_merge_size]])
    meta = vision_metadata(grid, cfg.vision)
    ids = jnp.zeros((1, 4), jnp.int32)
    pos = jnp.zeros((3, 1, 4), jnp.float32)
    px = jnp.zeros((int(np.prod(grid)), cfg.vision.patch_dim), jnp.float32)
    return ids, pos, causal_mask(jnp.ones((1, 4), jnp.int32)), px, meta


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Random float32 parameters for `cfg` (normal(0.02) kernels, zero biases, unit norms)."""
    return Qwen25VL(cfg).init(key, *_dummy_inputs(cfg))["params"]


def param_shapes(cfg: ModelConfig) -> Params:
    """The parameter tree of `cfg` as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def count_params(tree) -> int:
    """Total number of elements in a (possibly abstract) parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


@functools.partial(jax.jit, static_argnames=("cfg", "attn_chunk"))
def _forward_core(cfg: ModelConfig, params: Params, input_ids, positions, attention_mask,
                  img_px, img_meta, vid_px, vid_meta, attn_chunk: int | None = None):
    def fn(m: Qwen25VL):
        x = m.embed(input_ids)
        if img_px is not None:
            x = splice(x, input_ids, cfg.image_token_id, m.encode_vision(img_px, img_meta))
        if vid_px is not None:
            x = splice(x, input_ids, cfg.video_token_id, m.encode_vision(vid_px, vid_meta))
        hidden, _ = m.decode(x, positions, causal_mask(attention_mask))
        return m.logits(hidden)

    return nn.apply(fn, Qwen25VL(cfg, attn_q_chunk=attn_chunk))({"params": params})


def _vision_inputs(cfg: ModelConfig, ids: np.ndarray, pixels, grid, token_id: int, kind: str):
    if pixels is None:
        if np.any(ids == token_id):
            raise ValueError(f"input_ids contain {kind} tokens but no pixel values were given; pass "
                             f"pixel_values{'_videos' if kind == 'video' else ''} and {kind}_grid_thw.")
        return None, None
    if grid is None:
        raise ValueError(f"{kind} pixels were given without {kind}_grid_thw; pass the grid of every {kind}.")
    grid = np.asarray(grid).reshape(-1, 3)
    n_patch = int(np.sum(np.prod(grid, axis=1)))
    pixels = jnp.asarray(pixels)
    if pixels.shape != (n_patch, cfg.vision.patch_dim):
        raise ValueError(f"{kind} pixel values have shape {tuple(pixels.shape)} but {kind}_grid_thw "
                         f"{grid.tolist()} needs ({n_patch}, {cfg.vision.patch_dim}).")
    n_tok = int(np.sum(ids == token_id))
    if n_tok != n_patch // cfg.vision.merge_unit:
        raise ValueError(f"{kind} features and {kind} tokens do not match: input_ids hold {n_tok} "
                         f"{kind} tokens but the grids give {n_patch // cfg.vision.merge_unit}.")
    return pixels, vision_metadata(grid, cfg.vision)


def forward(cfg: ModelConfig, params: Params, input_ids, *, attention_mask=None, pixel_values=None,
            image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None,
            second_per_grid_ts=None, time_mode: str = "hf", attn_chunk: int | None = None) -> jax.Array:
    """Logits [B, T, V] (float32) for a batch, with HF's input names and meanings.

    input_ids [B, T]; attention_mask [B, T] (1 = token, 0 = padding, left or right);
    pixel_values [N_img_patches, C*2*14*14] with image_grid_thw [n_images, 3];
    pixel_values_videos likewise with video_grid_thw [n_videos, 3] and second_per_grid_ts [n_videos].
    Accepts numpy or jax arrays. Positions follow HF's get_rope_index (`time_mode="float"` gives
    StreamingVLM's untruncated temporal positions). attn_chunk: run the decoder's attention that many query
    rows at a time, so long inputs need [attn_chunk, T] attention logits instead of [T, T]; same result.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] array, got shape {ids.shape}.")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}.")
    if np.any(ids < 0) or np.any(ids >= cfg.text.vocab_size):
        raise ValueError(f"input_ids must lie in [0, {cfg.text.vocab_size}); got min {ids.min()} max {ids.max()}.")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    img_px, img_meta = _vision_inputs(cfg, ids, pixel_values, image_grid_thw, cfg.image_token_id, "image")
    vid_px, vid_meta = _vision_inputs(cfg, ids, pixel_values_videos, video_grid_thw, cfg.video_token_id, "video")
    positions, _ = get_rope_index(cfg, ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                  second_per_grid_ts=second_per_grid_ts, attention_mask=mask,
                                  time_mode=time_mode)
    return _forward_core(cfg, params, jnp.asarray(ids, jnp.int32), jnp.asarray(positions),
                         jnp.asarray(mask, jnp.int32), img_px, img_meta, vid_px, vid_meta, attn_chunk=attn_chunk)
