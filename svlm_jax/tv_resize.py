"""torchvision's `resize(BICUBIC, antialias=True)` of a uint8 tensor, bit for bit, in numpy.

That resize casts to float32 and runs torch's CPU `interpolate(mode="bicubic", antialias=True,
align_corners=False)`, then rounds half to even back to uint8. The original StreamingVLM resizes every
frame it streams or trains on this way (`livecc_utils/video_process_patch.py`, `_spatial_resize_video`).
What torch's kernel does (aten/src/ATen/native/cpu/UpSampleKernel.cpp, as built in the torch 2.13.0 CPU
wheel, whose AVX2 / AVX512 kernels contract a * b + c into fused multiply-adds):

- `separable_upsample_generic_Nd_kernel_impl`: the width pass first, then the height pass; a pass whose
  size does not change is skipped.
- `_compute_indices_min_size_weights_aa`: float32 scale, support, centre and taps; each tap's weight is
  `aa_filter` (Keys' cubic, a = -0.5, in the fused Horner forms of `UpSample.h`), summed in tap order in
  float32 and divided by that sum.
- `interpolate_aa_single_dim`: out = x0 * w0, then out += xj * wj in tap order, in float32. As compiled,
  the first 4 * ((xsize - 1) // 4) additions round each product first (the loop vectorised by 4 with an
  in-order reduction) and the remaining (xsize - 1) % 4 are fused multiply-adds.

The accumulation split and the fused forms were established against the wheel (weights read off exactly
from impulse inputs; every tap count from 3 to 30); `tests/test_resize_tv.py` holds the float32 values
before rounding equal to torch's for down- and upscales. fma=False reproduces torch's no-FMA build
(ATEN_CPU_CAPABILITY=default).
"""
import functools

import numpy as np

_F32, _F64 = np.float32, np.float64
_HALF_ULP32_IN_F64 = np.int64(1 << 28)   # a float64 lying exactly midway between two float32
_LOW29 = np.int64((1 << 29) - 1)


def _fma32(a, b, c):
    """float32 fma(a, b, c), correctly rounded.

    a * b is exact in float64 (24 + 24 significand bits <= 53), so s = a * b + c rounded once to float64
    and then to float32 is the correctly rounded result, except when that double rounding matters: s
    lands exactly on a float32 midpoint while a * b + c was not exactly s. Only then (rare) the exact
    error of the float64 sum (TwoSum) says which way to go, and s is nudged one float64 ulp towards
    the exact value before rounding to float32 (round-to-odd).
    """
    p = a.astype(_F64) * b
    s = p + c
    mid = (s.view(np.int64) & _LOW29) == _HALF_ULP32_IN_F64
    if mid.any():
        pm, cm, sm = p[mid], np.asarray(c, _F64)[mid] if np.ndim(c) else _F64(c), s[mid]
        bb = sm - pm
        e = (pm - (sm - bb)) + (cm - bb)
        s[mid] = np.where(e == 0, sm, np.nextafter(sm, np.where(e > 0, np.inf, -np.inf)))
    return s.astype(_F32)


def _aa_filter(x, fma=True):
    """HelperInterpCubic::aa_filter<float> (a = -0.5) with GCC's fp-contraction of the Horner forms:
    cubic_convolution1 = ((a+2)x - (a+3)) x x + 1 -> fma(fma(1.5, x, -2.5) * x, x, 1)
    cubic_convolution2 = ((a x - 5a) x + 8a) x - 4a -> fma(fma(fma(-0.5, x, 2.5), x, -4), x, 2)."""
    x = np.abs(x)
    if not fma:                                             # the DEFAULT (no-FMA) build: every op rounds
        a = _F32(-0.5)
        near = ((a + _F32(2)) * x - (a + _F32(3))) * x * x + _F32(1)
        far = ((a * x - _F32(5) * a) * x + _F32(8) * a) * x - _F32(4) * a
        return np.where(x < 1, near, np.where(x < 2, far, _F32(0))).astype(_F32)
    near = _fma32(_fma32(_F32(1.5), x, _F32(-2.5)) * x, x, _F32(1))
    far = _fma32(_fma32(_fma32(_F32(-0.5), x, _F32(2.5)), x, _F32(-4)), x, _F32(2))
    return np.where(x < 1, near, np.where(x < 2, far, _F32(0))).astype(_F32)


@functools.lru_cache(maxsize=64)
def aa_weights(n_in: int, n_out: int, fma: bool = True):
    """(xmin int64 [n_out], xsize int64 [n_out], weights float32 [n_out, K]) exactly as torch builds them
    (K = max_interp_size; weights past xsize are 0)."""
    scale = _F32(n_in) / _F32(n_out)                        # float(input_size) / output_size
    if scale >= 1:
        support = _F32(2.0 * _F64(scale))                   # (interp_size * 0.5) * scale, to float
        invscale = _F32(1.0 / _F64(scale))                  # 1.0 / scale in double, to float
    else:
        support, invscale = _F32(2.0), _F32(1.0)
    k = int(np.ceil(support)) * 2 + 1                       # max_interp_size
    i = np.arange(n_out)
    centre = (_F64(scale) * (i + 0.5)).astype(_F32)         # exact in double, one rounding
    xmin = np.maximum(((centre - support).astype(_F64) + 0.5).astype(np.int64), 0)   # trunc toward 0
    xmax = np.minimum(((centre + support).astype(_F64) + 0.5).astype(np.int64), n_in)
    xsize = np.clip(xmax - xmin, 0, k)
    j = np.arange(k)
    arg = (((xmin[:, None] + j).astype(_F32) - centre[:, None]).astype(_F64) + 0.5) * _F64(invscale)
    w = np.where(j < xsize[:, None], _aa_filter(arg.astype(_F32), fma), _F32(0))
    total = np.zeros(n_out, _F32)
    for t in range(k):                                      # float32, in tap order
        total = total + w[:, t]
    w = np.where(total[:, None] != 0, w / np.where(total == 0, _F32(1), total)[:, None], w).astype(_F32)
    for arr in (xmin, xsize, w):  # cached: shared by every caller
        arr.setflags(write=False)
    return xmin, xsize, w


def _pass0(x, n_out, fma=True):
    """One separable pass along axis 0 of float32 x [n_in, M] -> [n_out, M], in torch's order:
    acc = x0 * w0; for tap t = 1 .. xsize-1: acc = acc + round(xt * wt) while t <= 4 * ((xsize-1) // 4)
    (the part of the j-loop that GCC vectorised by 4: rounded products, added in order), then
    acc = fma(xt, wt, acc) (the scalar remainder of the loop, contracted to fma)."""
    n_in = x.shape[0]
    xmin, xsize, w = aa_weights(n_in, n_out, fma)
    n_vec = 4 * ((xsize - 1) // 4) if fma else xsize      # accumulations done by the vector body (no fma)
    out = x[xmin] * w[:, :1]
    tmp = np.empty_like(out)
    for t in range(1, w.shape[1]):
        live = xsize > t
        if not live.any():
            break                                          # taps past xsize have weight 0 everywhere
        idx = np.minimum(xmin + t, n_in - 1)               # past xsize: weight 0, acc + 0 == fma(x, 0, acc) == acc
        xt = x[idx]
        wt = w[:, t:t + 1]
        rows = np.nonzero(live & (t > n_vec))[0]           # outputs whose tap t is in the scalar (fma) loop
        if len(rows) == n_out:
            out = _fma32(xt, wt, out)
            continue
        fused = _fma32(xt[rows], wt[rows], out[rows]) if len(rows) else None
        np.multiply(xt, wt, out=tmp)
        np.add(out, tmp, out=out)
        if fused is not None:
            out[rows] = fused
    return out


def _resize_hm(frames: np.ndarray, height: int, width: int, fma: bool = True) -> np.ndarray:
    """float32 [height, T, width, C]: width pass, then height pass, each along axis 0 for fast gathers."""
    t, h, w, c = frames.shape
    x = np.ascontiguousarray(frames.transpose(2, 0, 1, 3), dtype=_F32).reshape(w, -1)    # [W, T*H*C]
    if w != width:                                          # torch: the contiguous (width) dim first
        x = _pass0(x, width, fma)
    x = np.ascontiguousarray(x.reshape(width, t, h, c).transpose(2, 1, 0, 3)).reshape(h, -1)  # [H, T*width*C]
    if h != height:                                         # a pass whose size is unchanged is skipped
        x = _pass0(x, height, fma)
    return x.reshape(height, t, width, c)


def resize_tv_float(frames: np.ndarray, height: int, width: int, fma: bool = True) -> np.ndarray:
    """The float32 values before clamping/rounding, [T, height, width, C]."""
    return _resize_hm(np.asarray(frames), height, width, fma).transpose(1, 0, 2, 3)


def resize_tv(frames: np.ndarray, height: int, width: int, fma: bool = True) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, height, width, 3], bit-exact to torch's CPU
    interpolate(float32, bicubic, antialias=True) -> clamp(0, 255) -> round (half to even) -> uint8.

    fma=True reproduces the AVX2 / AVX512 kernels (what torch picks on any x86 CPU with AVX2);
    fma=False the DEFAULT kernel (ATEN_CPU_CAPABILITY=default: no fma, plain float32 throughout)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames.copy()                                # torch copies the input unchanged
    y = np.rint(np.clip(_resize_hm(frames, height, width, fma), 0, 255)).astype(np.uint8)
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))
