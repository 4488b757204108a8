"""Parity of the Flax Qwen2.5-VL with transformers 4.52.4 on tiny noisy models (every parameter perturbed)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from svlm_jax import ModelConfig, forward  # noqa: E402
from svlm_jax.model import Qwen25VL  # noqa: E402
from svlm_jax.rope import get_rope_index  # noqa: E402
from svlm_jax.vision import vision_metadata  # noqa: E402
from tests.hf_reference import jax_params_from_hf, noisy_hf_model, random_video_pixels  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request):
    cfg = ModelConfig.tiny(tie_word_embeddings=request.param)
    hf = noisy_hf_model(cfg, seed=3)
    return cfg, hf, jax_params_from_hf(hf, cfg)


def _report(name, ours, ref):
    diff = float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))))
    print(f"{name}: max |diff| = {diff:.3e}")
    return diff


@pytest.fixture(scope="module")
def untied():
    cfg = ModelConfig.tiny(tie_word_embeddings=False)
    hf = noisy_hf_model(cfg, seed=5)
    return cfg, hf, jax_params_from_hf(hf, cfg)


@pytest.mark.parametrize("grid", [[[1, 12, 20]], [[2, 4, 6]], [[3, 12, 20]], [[1, 8, 8]], [[1, 8, 8], [2, 4, 6]]])
def test_vision_tower(untied, grid):
    # Multiple windows, ragged edge windows, padded-empty windows, t > 1, and two items at once.
    cfg, hf, params = untied
    px = random_video_pixels(grid, cfg.vision.patch_dim, seed=len(grid))
    with torch.no_grad():
        ref = hf.visual(torch.from_numpy(px), grid_thw=torch.tensor(grid)).numpy()
    meta = vision_metadata(grid, cfg.vision)
    ours = nn.apply(lambda m: m.encode_vision(jnp.asarray(px), meta), Qwen25VL(cfg))({"params": params})
    assert ours.shape == ref.shape
    assert _report(f"vision {grid}", ours, ref) <= 1e-5


def test_window_segments_are_small():
    # Window layers attend inside windows of at most 8x8 patches; full layers inside one temporal grid.
    cfg = ModelConfig.tiny()
    meta = vision_metadata([[3, 12, 20]], cfg.vision)
    assert meta["win_idx"].shape[1] == 64
    assert meta["full_idx"].shape == (3, 240)
    assert meta["win_valid"].sum() == meta["full_valid"].sum() == 720


def _mixed_ids(cfg, prefix, blocks, suffix):
    ids = list(prefix)
    for tok, n in blocks:
        ids += [cfg.vision_start_token_id] + [tok] * n + [cfg.vision_end_token_id, 17]
    return ids + list(suffix)


def test_rope_index_mixed_and_padded(pair):
    cfg, hf, _ = pair
    img, vid = [[1, 8, 8], [1, 4, 4]], [[2, 4, 6], [3, 4, 4]]
    spg = [1.0, 2.0]
    row0 = _mixed_ids(cfg, [3, 4, 5], [(cfg.image_token_id, 16), (cfg.video_token_id, 12)], [6, 7])
    row1 = _mixed_ids(cfg, [8], [(cfg.video_token_id, 12), (cfg.image_token_id, 4)], [9, 10, 11, 12])
    length = max(len(row0), len(row1)) + 2
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    ids[0, length - len(row0):], mask[0, length - len(row0):] = row0, 1  # left padded
    ids[1, :len(row1)], mask[1, :len(row1)] = row1, 1  # right padded
    ref_pos, ref_delta = hf.model.get_rope_index(
        torch.from_numpy(ids), torch.tensor(img), torch.tensor([vid[0], vid[1]]),
        torch.tensor(spg), torch.from_numpy(mask))
    # HF consumes grids across the batch in order: row 0 holds img0, vid0; row 1 holds vid1, img1.
    pos, delta = get_rope_index(cfg, ids, image_grid_thw=img, video_grid_thw=vid,
                                second_per_grid_ts=spg, attention_mask=mask)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(delta, ref_delta.numpy().reshape(-1))


def test_rope_index_fractional_seconds_per_grid(pair):
    # 4.52.4 casts second_per_grid_t to int before scaling; StreamingVLM's "float" mode keeps fractions.
    cfg, hf, _ = pair
    ids = np.array([_mixed_ids(cfg, [3], [(cfg.video_token_id, 24)], [5])])
    ref, _ = hf.model.get_rope_index(torch.from_numpy(ids), None, torch.tensor([[4, 4, 6]]), torch.tensor([1.5]),
                                     torch.ones_like(torch.from_numpy(ids)))
    ours, _ = get_rope_index(cfg, ids, video_grid_thw=[[4, 4, 6]], second_per_grid_ts=[1.5])
    np.testing.assert_array_equal(ours, ref.numpy())
    flt, _ = get_rope_index(cfg, ids, video_grid_thw=[[4, 4, 6]], second_per_grid_ts=[1.5], time_mode="float")
    t_axis = flt[0, 0, 2:2 + 24].reshape(4, 6)[:, 0] - 2
    np.testing.assert_allclose(t_axis, [0, 3, 6, 9])


def _hf_logits(hf, ids, mask=None, **vision):
    kw = {k: torch.as_tensor(np.asarray(v)) for k, v in vision.items() if v is not None}
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask), **kw)
    return out.logits.numpy()


def _inputs(cfg, kind):
    img_grid, vid_grid = [[1, 8, 8]], [[2, 4, 6]]
    blocks = {"image": [(cfg.image_token_id, 16)], "video": [(cfg.video_token_id, 12)],
              "image+video": [(cfg.image_token_id, 16), (cfg.video_token_id, 12)]}[kind]
    ids = np.array([_mixed_ids(cfg, [3, 4], blocks, [5, 6, 7])])
    vision = {}
    if "image" in kind:
        vision.update(pixel_values=random_video_pixels(img_grid, cfg.vision.patch_dim, 1), image_grid_thw=img_grid)
    if "video" in kind:
        vision.update(pixel_values_videos=random_video_pixels(vid_grid, cfg.vision.patch_dim, 2),
                      video_grid_thw=vid_grid, second_per_grid_ts=[1.0])
    return ids, vision


@pytest.mark.parametrize("kind", ["image", "video", "image+video"])
def test_logits_with_vision(pair, kind):
    cfg, hf, params = pair
    ids, vision = _inputs(cfg, kind)
    ref = _hf_logits(hf, ids, **vision)
    ours = forward(cfg, params, ids, **vision)
    assert _report(f"logits {kind} tie={cfg.text.tie_word_embeddings}", ours, ref) <= TOL
    if kind == "image+video":  # attention 8 query rows at a time: the same logits
        chunked = forward(cfg, params, ids, **vision, attn_chunk=8)
        assert _report(f"logits {kind} attn_chunk=8", chunked, ref) <= TOL


def test_logits_text_only_padded_batch(pair):
    cfg, hf, params = pair
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 900, (3, 13))
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    ref = _hf_logits(hf, ids, mask)
    ours = np.asarray(forward(cfg, params, ids, attention_mask=mask))
    keep = mask.astype(bool)
    assert _report(f"logits text tie={cfg.text.tie_word_embeddings}", ours[keep], ref[keep]) <= TOL
    chunked = np.asarray(forward(cfg, params, ids, attention_mask=mask, attn_chunk=5))  # 13 rows: 5, 5, 3
    assert _report("logits text attn_chunk=5", chunked[keep], ref[keep]) <= TOL


def test_logits_bfloat16(pair):
    # HF in bf16 vs ours with bf16 params and compute. Matmul accumulation order differs between torch
    # and XLA, so we hold a tolerance relative to the logit scale rather than bit equality.
    cfg, hf, params = pair
    ids, vision = _inputs(cfg, "image+video")
    ref32 = _hf_logits(hf, ids, **vision)
    hf16 = hf.to(torch.bfloat16)
    try:
        kw = {k: torch.as_tensor(np.asarray(v)) for k, v in vision.items()}
        for k in ("pixel_values", "pixel_values_videos"):
            kw[k] = kw[k].to(torch.bfloat16)
        with torch.no_grad():
            ref16 = hf16(input_ids=torch.from_numpy(ids), **kw).logits.float().numpy()
    finally:
        hf.to(torch.float32)
    p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    ours = np.asarray(forward(cfg.replace(dtype="bfloat16"), p16, ids, **vision))
    scale = float(np.max(np.abs(ref32)))
    d_ref = _report("bf16 HF vs fp32 HF", ref16, ref32) / scale
    d_ours = _report("bf16 ours vs bf16 HF", ours, ref16) / scale
    print(f"relative to max |logit| {scale:.2f}: HF bf16 drift {d_ref:.3e}, ours vs HF bf16 {d_ours:.3e}")
    assert d_ours <= 2e-2


def test_mismatched_vision_inputs_are_clear_errors(pair):
    cfg, _, params = pair
    ids, vision = _inputs(cfg, "video")
    with pytest.raises(ValueError, match="no pixel values"):
        forward(cfg, params, ids)
    with pytest.raises(ValueError, match="do not match"):
        forward(cfg, params, np.concatenate([ids, [[cfg.video_token_id]]], 1), **vision)
    with pytest.raises(ValueError, match="without video_grid_thw"):
        forward(cfg, params, ids, pixel_values_videos=vision["pixel_values_videos"])
