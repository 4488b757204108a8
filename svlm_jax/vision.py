"""The Qwen2.5-VL vision tower: patch embedding, 2-D rotary, window attention, SwiGLU blocks, merger.

Everything that depends only on `grid_thw` (window order, rotary coordinates, attention segments)
is computed on the host by `vision_metadata`, so the jitted tower sees static shapes per grid.
Attention runs per segment: window layers over windows of at most 64 patches, full layers over one
temporal grid of one item. No dense N x N mask over a whole frame is ever built.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from svlm_jax.config import VisionConfig
from svlm_jax.layers import RMSNorm, SwiGLU, apply_rotary, dense, masked_softmax_attention
from svlm_jax.rope import vision_cos_sin

VisionMeta = dict[str, Any]  # host-built index arrays, see vision_metadata


def window_index(grid_thw: Sequence[Sequence[int]], cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """HF's get_window_index: (window_index [N/4], cu_window_seqlens [nW+1] in patches, empty windows dropped).

    Merged units are regrouped into windows of `window_merged`^2 units, window-major, per temporal
    grid and item. HF pads a full extra window row when a side is already divisible; those windows
    are empty and vanish, so this keeps the same order.
    """
    ws, m = cfg.window_merged, cfg.spatial_merge_size
    out, cu, offset = [], [0], 0
    for t, h, w in grid_thw:
        lh, lw = h // m, w // m
        idx = np.arange(t * lh * lw).reshape(t, lh, lw)
        ph, pw = ws - lh % ws, ws - lw % ws
        nh, nw = (lh + ph) // ws, (lw + pw) // ws
        padded = np.pad(idx, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        padded = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, ws, ws)
        seqlens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
        flat = padded.reshape(-1)
        out.append(flat[flat != -100] + offset)
        cu.extend((np.cumsum(seqlens) * m * m + cu[-1]).tolist())
        offset += t * lh * lw
    cu = np.asarray(cu, np.int64)
    cu = cu[np.concatenate([[True], np.diff(cu) != 0])]  # unique_consecutive
    return np.concatenate(out).astype(np.int32), cu


def rotary_coords(grid_thw: Sequence[Sequence[int]], cfg: VisionConfig) -> np.ndarray:
    """(row, col) patch coordinates [N, 2] in the processor's patch order (2x2 merge groups contiguous)."""
    m, rows = cfg.spatial_merge_size, []
    for t, h, w in grid_thw:
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w))
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w))
        group = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)  # noqa: E731
        rows.append(np.tile(np.stack([group(hpos), group(wpos)], axis=-1), (t, 1)))
    return np.concatenate(rows).astype(np.int32)


def _segments(cu: np.ndarray, n: int, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous segments [cu[i], cu[i+1]) -> (gather index [S, L], valid [S, L]); pad index = n (dropped)."""
    lens = np.diff(cu)
    length = int(lens.max()) if max_len is None else max_len
    ar = np.arange(length)[None, :]
    valid = ar < lens[:, None]
    idx = np.where(valid, cu[:-1, None] + ar, n)
    return idx.astype(np.int32), valid


def vision_metadata(grid_thw, cfg: VisionConfig) -> VisionMeta:
    """All index arrays the tower needs for items with patch grids `grid_thw` [n_items, 3].

    Returns numpy arrays: window_index / reverse_index [N/4] (merged units), rot_pos [N, 2] in window
    order, win_idx / win_valid [S_w, L_w] (windows, L_w <= 64), full_idx / full_valid [S_f, L_f]
    (one temporal grid of one item each). Indexes point into the window-ordered sequence.
    """
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    if np.any(grid[:, 1:] % cfg.spatial_merge_size):
        raise ValueError(f"grid_thw {grid.tolist()} has h or w not divisible by spatial_merge_size "
                         f"{cfg.spatial_merge_size}; resize frames to multiples of "
                         f"{cfg.patch_size * cfg.spatial_merge_size} pixels.")
    unit = cfg.merge_unit
    n = int(np.sum(np.prod(grid, axis=1)))
    win, cu_win = window_index(grid.tolist(), cfg)
    rot = rotary_coords(grid.tolist(), cfg).reshape(n // unit, unit, 2)[win].reshape(n, 2)
    cu_full = np.concatenate([[0], np.cumsum(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))])
    win_idx, win_valid = _segments(cu_win, n, max_len=cfg.window_merged**2 * unit)
    full_idx, full_valid = _segments(cu_full, n)
    return dict(window_index=win, reverse_index=np.argsort(win).astype(np.int32), rot_pos=rot,
                win_idx=win_idx, win_valid=win_valid, full_idx=full_idx, full_valid=full_valid)


class VisionAttention(nn.Module):
    """Multi-head attention inside segments; x [N, D] (window order) -> [N, D]."""

    cfg: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, seg_idx, seg_valid):
        c = self.cfg
        n = x.shape[0]
        qkv = dense(3 * c.hidden_size, "qkv", bias=True, dtype=self.dtype)(x)
        q, k, v = jnp.moveaxis(qkv.reshape(n, 3, c.num_heads, c.head_dim), 1, 0)  # 3 x [N, H, hd]
        # HF rotates the vision q/k in fp32 and casts back.
        rot = lambda a: apply_rotary(a.astype(jnp.float32), cos[:, None], sin[:, None]).astype(a.dtype)  # noqa: E731
        q, k = rot(q), rot(k)
        gather = lambda a: jnp.take(a, seg_idx, axis=0, mode="clip")  # noqa: E731  [S, L, H, hd]
        mask = seg_valid[:, None, None, :]  # [S, 1, 1, L]: keys only; padded queries are dropped below
        out = masked_softmax_attention(gather(q), gather(k), gather(v), mask, c.head_dim**-0.5)
        out = jnp.zeros((n + 1,) + out.shape[2:], out.dtype).at[seg_idx].set(out, mode="drop")[:n]
        return dense(c.hidden_size, "proj", bias=True, dtype=self.dtype)(out.reshape(n, c.hidden_size))


class VisionBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    cfg: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, seg_idx, seg_valid):
        c = self.cfg
        x = x + VisionAttention(c, self.dtype, name="attn")(RMSNorm(c.rms_norm_eps, name="norm1")(x),
                                                             cos, sin, seg_idx, seg_valid)
        h = RMSNorm(c.rms_norm_eps, name="norm2")(x)
        return x + SwiGLU(c.hidden_size, c.intermediate_size, True, self.dtype, name="mlp")(h)


class PatchMerger(nn.Module):
    """RMSNorm, concat each 2x2 group, then Linear-GELU(erf)-Linear: [N, D] -> [N/4, out_hidden]."""

    cfg: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        h = RMSNorm(c.rms_norm_eps, name="ln_q")(x).reshape(-1, c.hidden_size * c.merge_unit)
        h = dense(c.hidden_size * c.merge_unit, "mlp_0", bias=True, dtype=self.dtype)(h)
        h = jax.nn.gelu(h, approximate=False)  # torch nn.GELU() is the exact erf form
        return dense(c.out_hidden_size, "mlp_2", bias=True, dtype=self.dtype)(h)


class VisionTower(nn.Module):
    """pixel_values [N, C*tp*p*p] + metadata -> merged embeddings [N/4, out_hidden] in raster order."""

    cfg: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values, meta: VisionMeta):
        c = self.cfg
        n = pixel_values.shape[0]
        x = dense(c.hidden_size, "patch_embed", bias=False, dtype=self.dtype)(pixel_values.astype(self.dtype))
        x = x.reshape(n // c.merge_unit, c.merge_unit, -1)[meta["window_index"]].reshape(n, -1)  # [N, D]
        cos, sin = vision_cos_sin(meta["rot_pos"], c.head_dim)  # [N, hd] fp32
        full = set(c.fullatt_block_indexes)
        for i in range(c.depth):
            seg = ("full_idx", "full_valid") if i in full else ("win_idx", "win_valid")
            x = VisionBlock(c, self.dtype, name=f"blocks_{i}")(x, cos, sin, meta[seg[0]], meta[seg[1]])
        x = PatchMerger(c, self.dtype, name="merger")(x)  # [N/4, out]
        return x[meta["reverse_index"]]
