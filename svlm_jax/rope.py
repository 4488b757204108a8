"""Rotary tables and the M-RoPE position builder (a port of HF's `get_rope_index`).

Positions are computed on the host with numpy because they depend on where vision blocks sit in
the token stream. `block_positions` is the chunk-by-chunk form: it continues from a cursor, so the
streaming engine can number one second's tokens at a time and get what the whole-sequence rule gives.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from svlm_jax.config import ModelConfig, TextConfig

# How the temporal index of a video grid is computed.
#  "hf":    transformers 4.52.4: second_per_grid_t is cast to int before scaling, then truncated.
#  "float": StreamingVLM's pos_emb.py: float positions, no truncation (differs only when fps != 2).
TIME_MODES = ("hf", "float")


def vision_block_positions(grid_thw: Sequence[int], start: float, *, spatial_merge_size: int,
                           second_per_grid_t: float, tokens_per_second: float,
                           time_mode: str = "hf") -> np.ndarray:
    """Positions [3, t*h*w] of one vision block with patch grid (t, h, w), starting at `start`.

    t axis: start + k * second_per_grid_t * tokens_per_second; h/w axes: start + merged row / col.
    """
    t, h, w = (int(x) for x in grid_thw)
    gh, gw = h // spatial_merge_size, w // spatial_merge_size
    if time_mode == "hf":
        t_idx = np.trunc(np.arange(t) * float(int(second_per_grid_t)) * tokens_per_second)
    elif time_mode == "float":
        t_idx = np.arange(t) * float(second_per_grid_t) * tokens_per_second
    else:
        raise ValueError(f"time_mode must be one of {TIME_MODES}, got {time_mode!r}.")
    tt = np.broadcast_to(t_idx[:, None, None], (t, gh, gw))
    hh = np.broadcast_to(np.arange(gh)[None, :, None], (t, gh, gw))
    ww = np.broadcast_to(np.arange(gw)[None, None, :], (t, gh, gw))
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]).astype(np.float64) + start


def block_positions(cfg: ModelConfig, input_ids: Sequence[int] | np.ndarray, *, cursor: float = 0.0,
                    image_grids: Sequence[Sequence[int]] = (), video_grids: Sequence[Sequence[int]] = (),
                    second_per_grid_ts: Sequence[float] | None = None,
                    time_mode: str = "hf") -> tuple[np.ndarray, float]:
    """Number one stretch of tokens [T] starting at `cursor`; returns (positions [3, T], next cursor).

    Text advances every axis by 1 per token. A vision block (the run of image/video pad tokens
    after `<|vision_start|>`) is laid out by `vision_block_positions`, and the cursor moves to its
    max + 1. Grids are consumed in order; each block must be complete within `input_ids`.
    """
    ids = np.asarray(input_ids).reshape(-1)
    merge = cfg.vision.spatial_merge_size
    out = np.empty((3, ids.size), np.float64)
    images, videos = list(image_grids), list(video_grids)
    n_img = n_vid = 0
    i = 0
    while i < ids.size:
        tok = int(ids[i])
        if tok in (cfg.image_token_id, cfg.video_token_id):
            is_img = tok == cfg.image_token_id
            grids = images if is_img else videos
            k = n_img if is_img else n_vid
            if k >= len(grids):
                kind = "image" if is_img else "video"
                raise ValueError(f"input_ids hold more {kind} blocks than the {len(grids)} {kind} grids given; "
                                 f"pass one grid_thw row per {kind}.")
            grid = grids[k]
            if is_img:
                spg, n_img = 0.0, n_img + 1
            else:
                spg = 1.0 if second_per_grid_ts is None else float(second_per_grid_ts[k])
                n_vid += 1
            n = int(np.prod(grid)) // (merge * merge)
            if i + n > ids.size or not np.all(ids[i:i + n] == tok):
                raise ValueError(f"Vision block at token {i} needs {n} pad tokens for grid {tuple(grid)}; "
                                 "input_ids and grid_thw disagree.")
            pos = vision_block_positions(grid, cursor, spatial_merge_size=merge, second_per_grid_t=spg,
                                         tokens_per_second=cfg.vision.tokens_per_second, time_mode=time_mode)
            out[:, i:i + n] = pos
            cursor = float(pos.max()) + 1
            i += n
        else:
            out[:, i] = cursor
            cursor += 1
            i += 1
    return out, cursor


def get_rope_index(cfg: ModelConfig, input_ids: np.ndarray, *, image_grid_thw=None, video_grid_thw=None,
                   second_per_grid_ts=None, attention_mask=None,
                   time_mode: str = "hf") -> tuple[np.ndarray, np.ndarray]:
    """HF's `get_rope_index` for a batch: input_ids [B, T] -> (positions [3, B, T] float32, deltas [B]).

    Grids are consumed across the batch in row order, as HF does. Padded slots (mask 0) get position 1.
    delta = max position + 1 - T, the offset HF adds to later decode steps.
    """
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    img = [] if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3).tolist()
    vid = [] if video_grid_thw is None else np.asarray(video_grid_thw).reshape(-1, 3).tolist()
    spg = None if second_per_grid_ts is None else np.asarray(second_per_grid_ts, np.float64).reshape(-1).tolist()
    pos = np.ones((3, b, t), np.float64)
    deltas = np.zeros((b,), np.float64)
    for r in range(b):
        keep = mask[r] == 1
        row = ids[r][keep]
        n_i = _count_blocks(row, cfg.image_token_id)
        n_v = _count_blocks(row, cfg.video_token_id)
        p, _ = block_positions(cfg, row, image_grids=img[:n_i], video_grids=vid[:n_v],
                               second_per_grid_ts=None if spg is None else spg[:n_v], time_mode=time_mode)
        img, vid = img[n_i:], vid[n_v:]
        if spg is not None:
            spg = spg[n_v:]
        pos[:, r, keep] = p
        deltas[r] = (p.max() + 1 if p.size else 0) - t
    return pos.astype(np.float32), deltas


def _count_blocks(row: np.ndarray, pad_id: int) -> int:
    """Number of maximal runs of `pad_id` in a 1-D token row."""
    hit = row == pad_id
    return int(np.sum(hit[1:] & ~hit[:-1]) + (hit[0] if hit.size else 0))


# ---------------------------------------------------------------------------- rotary tables
def text_cos_sin(positions, cfg: TextConfig, dtype):
    """M-RoPE cos/sin for decoder positions [3, B, T] -> two [B, T, head_dim] arrays in `dtype`.

    Frequency j takes its angle from axis t for j < s0, h for s0 <= j < s0+s1, and w after, in both
    halves of head_dim (mrope_section doubled). Computed in fp32 and cast, as HF does.
    """
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
    axis_of_freq = np.repeat(np.arange(3), cfg.mrope_section)  # [half]
    pos = jnp.asarray(positions, jnp.float32)  # [3, B, T]
    # Pick, per frequency, the position of its axis: [B, T, half].
    pos_f = jnp.moveaxis(pos, 0, -1)[..., axis_of_freq]
    angles = pos_f * inv_freq[:half]
    emb = jnp.concatenate([angles, angles], axis=-1)  # [B, T, head_dim]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def vision_cos_sin(pos_hw, head_dim: int, theta: float = 10000.0):
    """2-D vision rotary cos/sin for patch coordinates [N, 2] (row, col) -> two [N, head_dim] fp32 arrays.

    The first half of the rotary dims carry rows and the second half columns, each with
    head_dim/4 frequencies, then the whole vector is repeated (HF's cat(rot, rot)).
    """
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))  # [head_dim/4]
    pos = jnp.asarray(pos_hw, jnp.float32)
    rot = (pos[:, :, None] * inv_freq[None, None, :]).reshape(pos.shape[0], -1)  # [N, head_dim/2]
    emb = jnp.concatenate([rot, rot], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)
