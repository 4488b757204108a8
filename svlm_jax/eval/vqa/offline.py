"""Offline answering, as the originals do it: the whole clip, full attention, one forward pass, the answer
read from the last position's logits (docs/ORIGINAL.md §OVO-Bench,
§Video-MME, LongVideoBench, MVBench).

The prompt is the stock Qwen2.5-VL chat template with the default system prompt:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n{pre_text}<|vision_start|><|video_pad|>*N<|vision_end|>{text}<|im_end|>\\n
    <|im_start|>assistant\\n{answer_prefix}

Shapes are bucketed so a benchmark compiles a handful of programs, not one per question: the vision tower
runs on fixed chunks of temporal grids (Qwen2.5-VL attends within one temporal grid, so chunking is exact),
and a batch of prompts is left-padded to a bucketed length. The decoder is `forward`'s (same modules,
same M-RoPE positions); `attn_chunk` bounds the attention logits to [attn_chunk, T] for long clips.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.model import Qwen25VL, causal_mask, splice
from svlm_jax.prompt import DEFAULT_SYSTEM
from svlm_jax.rope import get_rope_index
from svlm_jax.stream import encode_vision
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.vision import vision_metadata

Params = dict[str, Any]


def chat_ids(tok: ChatTokenizer, *, n_video: int, text: str, pre_text: str = "", answer_prefix: str = "",
             system: str = DEFAULT_SYSTEM) -> list[int]:
    """The prompt's token ids (module docstring). Text between special tokens is encoded as one piece,
    as HF's tokenizer does after splitting out the special tokens."""
    return ([tok.im_start] + tok.encode(f"system\n{system}") + [tok.im_end] + tok.encode("\n")
            + [tok.im_start] + tok.encode(f"user\n{pre_text}") + [tok.vision_start] + [tok.video_pad] * n_video
            + [tok.vision_end] + tok.encode(text) + [tok.im_end] + tok.encode("\n")
            + [tok.im_start] + tok.encode(f"assistant\n{answer_prefix}"))


def bucket(n: int, minimum: int = 256, steps: int = 4) -> int:
    """Round n up to a size from a geometric ladder: `steps` sizes per doubling, at least `minimum`."""
    if n <= minimum:
        return minimum
    top = 1 << (int(n - 1).bit_length())  # the power of two >= n
    step = top // (2 * steps)
    return -(-n // step) * step


@dataclasses.dataclass(frozen=True, eq=False)
class Prompt:
    """One question ready for the model: ids [T]; pixel_values [N, 1176]; grid_thw (t, h, w);
    second_per_grid_ts: seconds per temporal grid for M-RoPE."""

    ids: list[int]
    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    second_per_grid_ts: float = 1.0


def encode_clip(cfg: ModelConfig, params: Params, pixel_values: np.ndarray, grid_thw: Sequence[int], *,
                chunk: int = 16) -> jax.Array:
    """Vision features [t*h*w/4, D] of one clip, `chunk` temporal grids per call (one compile per (h, w))."""
    t, h, w = (int(x) for x in grid_thw)
    per = h * w  # patches per temporal grid
    cap = per // cfg.vision.merge_unit
    meta = vision_metadata(np.asarray([[1, h, w]] * chunk), cfg.vision)
    out = []
    for s in range(0, t, chunk):
        n = min(chunk, t - s)
        px = np.zeros((chunk * per, cfg.vision.patch_dim), np.float32)
        px[:n * per] = pixel_values[s * per:(s + n) * per]
        feats = encode_vision(cfg, params, px, meta, items=chunk, cap=cap)  # [chunk, cap, D]
        out.append(feats[:n].reshape(n * cap, -1))
    return jnp.concatenate(out)


@functools.partial(jax.jit, static_argnames=("cfg", "attn_chunk"))
def _last_logits(cfg: ModelConfig, params: Params, ids, positions, mask, feats, attn_chunk: int | None):
    """ids/mask [B, T], positions [3, B, T], feats [M, D] (rows in video-token order) -> logits [B, V] at T-1."""

    def fn(m: Qwen25VL):
        x = splice(m.embed(ids), ids, cfg.video_token_id, feats)
        hidden, _ = m.decode(x, positions, causal_mask(mask))
        return m.logits(hidden[:, -1:])[:, 0]

    return nn.apply(fn, Qwen25VL(cfg, attn_q_chunk=attn_chunk))({"params": params})


def last_logits(cfg: ModelConfig, params: Params, prompts: Sequence[Prompt], *, attn_chunk: int | None = 1024,
                vision_chunk: int = 16, batch: int | None = None, pad_id: int = 0,
                time_mode: str = "hf") -> np.ndarray:
    """Logits [len(prompts), V] at each prompt's last token, full attention over its clip.

    Prompts are left-padded to a bucketed common length; `batch` pads the batch dimension to a fixed size
    (repeating the last prompt) so every batch reuses one compile. Equal to `forward(...)[:, -1]` on each
    prompt alone, up to float reassociation.
    """
    feats_cache: dict[int, jax.Array] = {}
    feats = []
    for p in prompts:
        key = id(p.pixel_values)
        if key not in feats_cache:  # questions sharing a clip share its features
            feats_cache[key] = encode_clip(cfg, params, p.pixel_values, p.grid_thw, chunk=vision_chunk)
        feats.append(feats_cache[key])
    rows = list(prompts) + [prompts[-1]] * (max(batch or 0, len(prompts)) - len(prompts))
    feats += [feats[-1]] * (len(rows) - len(prompts))
    t = bucket(max(len(p.ids) for p in rows))
    ids = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for r, p in enumerate(rows):
        ids[r, t - len(p.ids):] = p.ids
        mask[r, t - len(p.ids):] = 1
    positions, _ = get_rope_index(cfg, ids, video_grid_thw=np.asarray([p.grid_thw for p in rows]),
                                  second_per_grid_ts=[p.second_per_grid_ts for p in rows], attention_mask=mask,
                                  time_mode=time_mode)
    all_feats = jnp.concatenate(feats)
    m = bucket(all_feats.shape[0])
    all_feats = jnp.pad(all_feats, ((0, m - all_feats.shape[0]), (0, 0)))
    out = _last_logits(cfg, params, jnp.asarray(ids), jnp.asarray(positions, jnp.float32), jnp.asarray(mask),
                       all_feats, attn_chunk=attn_chunk)
    return np.asarray(out)[:len(prompts)]
