"""svlm_jax.tv_resize: torch's CPU antialiased bicubic, float32 values before rounding included."""
import numpy as np
import pytest

from svlm_jax import tv_resize

torch = pytest.importorskip("torch")

CASES = [  # (H, W) -> (height, width): down, up, one axis only, mixed, odd tap counts
    ((360, 640), (364, 644)), ((272, 640), (252, 588)), ((100, 150), (84, 112)), ((100, 150), (140, 210)),
    ((360, 640), (360, 588)), ((360, 640), (300, 640)), ((300, 40), (40, 300)), ((97, 211), (29, 57)),
]


def _torch(frames, height, width):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
    y = torch.nn.functional.interpolate(x, size=[height, width], mode="bicubic", align_corners=False, antialias=True)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("src,dst", CASES)
def test_resize_equals_torch_bit_for_bit(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    noise = rng.integers(0, 256, (2, *src, 3), np.uint8)
    yy, xx = np.mgrid[:src[0], :src[1]]
    smooth = np.stack([(127 + 120 * np.sin(xx / 7.0 + c) * np.cos(yy / 5.0)) for c in range(3)], -1)
    for frames in (noise, np.stack([smooth, smooth[::-1]]).astype(np.uint8)):
        ref = _torch(frames, *dst)
        got = tv_resize.resize_tv_float(frames, *dst)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), f"max |diff| {np.abs(got - ref).max()}"
        want = np.clip(ref, 0, 255).round().astype(np.uint8)
        np.testing.assert_array_equal(tv_resize.resize_tv(frames, *dst), want)


def test_weights_sum_to_one_and_are_cached_read_only():
    xmin, xsize, w = tv_resize.aa_weights(640, 252)
    assert w.shape[0] == 252 and not w.flags.writeable
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert tv_resize.aa_weights(640, 252)[2] is w
