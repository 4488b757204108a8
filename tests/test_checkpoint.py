import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svlm_jax
from svlm_jax import ModelConfig, param_shapes
from svlm_jax.checkpoint import CONFIG_FILE, load_arrays, params_metadata, writer


@pytest.fixture(scope="module")
def model():
    # Random values from the abstract shapes: cheaper than compiling init_params.
    cfg = ModelConfig.tiny(tie_word_embeddings=False)
    rng = np.random.default_rng(3)
    return cfg, jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), param_shapes(cfg))


def _snapshot(directory):
    return sorted((str(p.relative_to(directory)), p.read_bytes() if p.is_file() else b"")
                  for p in directory.rglob("*"))


def test_round_trip_is_exact(model, tmp_path):
    cfg, params = model
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": {}}')
    out = svlm_jax.save(tmp_path / "ckpt", cfg, params, files=[tok])
    assert (out / "tokenizer.json").read_text() == '{"model": {}}'
    assert json.loads((out / CONFIG_FILE).read_text()) == json.loads(json.dumps(cfg.to_json()))
    cfg2, params2 = svlm_jax.load(out)
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert isinstance(b, jax.Array) and b.dtype == a.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # No temp directories are left next to the checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tokenizer.json"]


def test_load_casts_to_bfloat16(model, tmp_path):
    cfg, params = model
    svlm_jax.save(tmp_path / "ckpt", cfg, params)
    cfg2, params2 = svlm_jax.load(tmp_path / "ckpt", dtype=jnp.bfloat16)
    assert cfg2 == cfg.replace(dtype="bfloat16")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))
    # A bf16 checkpoint keeps bf16 when loaded without a dtype.
    svlm_jax.save(tmp_path / "bf16", cfg2, params2)
    assert {str(dt) for _, dt in params_metadata(tmp_path / "bf16").values()} == {"bfloat16"}
    cfg3, params3 = svlm_jax.load(tmp_path / "bf16")
    assert cfg3.dtype == "bfloat16" and {x.dtype for x in jax.tree.leaves(params3)} == {jnp.dtype(jnp.bfloat16)}


def test_overwrite_refused_then_allowed(model, tmp_path):
    cfg, params = model
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="non-empty directory"):
        svlm_jax.save(target, cfg, params)
    assert _snapshot(target) == [("notes.txt", b"keep me")]
    svlm_jax.save(target, cfg, params, overwrite=True)
    assert not (target / "notes.txt").exists() and svlm_jax.load(target)[0] == cfg
    (tmp_path / "empty").mkdir()
    svlm_jax.save(tmp_path / "empty", cfg, params)  # an empty directory is not refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]


def test_failed_save_leaves_nothing(model, tmp_path):
    cfg, params = model
    bad = jax.tree.map(lambda x: x, params)
    bad["text"]["norm"]["scale"] = jnp.ones((3,))
    with pytest.raises(ValueError, match=r"'text/norm/scale' has shape \(3,\), config expects \(64,\)"):
        svlm_jax.save(tmp_path / "ckpt", cfg, bad)
    del bad["text"]["norm"]
    with pytest.raises(KeyError, match="never written, first 'text/norm/scale'"):
        svlm_jax.save(tmp_path / "ckpt", cfg, bad)
    assert list(tmp_path.iterdir()) == []


def test_load_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No svlm-jax checkpoint at .*does not exist"):
        svlm_jax.load(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="No svlm-jax checkpoint at .*has no svlm_config.json"):
        svlm_jax.load(tmp_path / "plain")


def test_load_rejects_config_mismatch(model, tmp_path):
    cfg, params = model
    svlm_jax.save(tmp_path / "ckpt", cfg, params)
    other = cfg.replace(text=cfg.text.__class__(**{**cfg.to_json()["text"], "mrope_section": (2, 3, 3),
                                                   "intermediate_size": 96}))
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(other.to_json()))
    with pytest.raises(ValueError, match=r"'text/layers_0/mlp/down_proj/kernel' is \(128, 64\), config expects"):
        svlm_jax.load(tmp_path / "ckpt")


def test_writer_in_pieces_and_partial_read(model, tmp_path):
    cfg, params = model
    flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(params)}
    names = sorted(flat)
    with writer(tmp_path / "ckpt", cfg) as add:
        for i in range(0, len(names), 25):
            add({n: np.asarray(flat[n]) for n in names[i:i + 25]})
    part = load_arrays(tmp_path / "ckpt", ["lm_head/kernel", "text/norm/scale"], dtype="bfloat16")
    assert sorted(part) == ["lm_head/kernel", "text/norm/scale"]
    assert part["lm_head/kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(part["lm_head/kernel"], np.asarray(flat["lm_head/kernel"]).astype(jnp.bfloat16))
    _, loaded = svlm_jax.load(tmp_path / "ckpt")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_preprocessing_round_trip_and_damage(tmp_path):
    """preprocessing.json carries fps, pixel budget, frame picking and resize; a bad value is one clear error."""
    import json

    from svlm_jax.checkpoint import Preprocessing, load_preprocessing, save_preprocessing
    from svlm_jax.errors import CheckpointError

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "svlm_config.json").write_text("{}")
    (d / "params").mkdir()
    pre = Preprocessing(fps=4, min_pixels=3136, max_pixels=3136, frames="grid", resize="pil")
    save_preprocessing(d, pre)
    assert load_preprocessing(d) == pre
    assert load_preprocessing(d).replace(frames=None, resize="torchvision").resize == "torchvision"
    (d / "preprocessing.json").write_text(json.dumps({"fps": 2, "frames": "every"}))
    with pytest.raises(CheckpointError, match="preprocessing.json"):
        load_preprocessing(d)


# ------------------------------------------------------------- preprocessing.json is the default everywhere
def _frames_ckpt(tmp_path, model):
    """A checkpoint with a tokenizer and a preprocessing.json that is not the default: 4 fps, 56x56, grid, pil."""
    from svlm_jax.checkpoint import Preprocessing, save_preprocessing
    from svlm_jax.tokenizer import word_level_tokenizer

    cfg, params = model
    tok = tmp_path / "tokenizer.json"
    word_level_tokenizer(["red", "ball"], cfg).save(str(tok))
    ckpt = svlm_jax.save(tmp_path / "ckpt", cfg, params, files=[tok])
    pre = Preprocessing(fps=4, min_pixels=56 * 56, max_pixels=56 * 56, frames="grid", resize="pil")
    save_preprocessing(ckpt, pre)
    return str(ckpt), pre


def _pictures(n, h=224, w=320):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_stream_for_a_model_follows_its_preprocessing(model, tmp_path):
    """FrameStream.for_model: the checkpoint's fps, pixel budget, picking and resize; explicit ones win, None
    keeps the checkpoint's; a checkpoint without preprocessing.json gets StreamingVLM's defaults."""
    from svlm_jax.checkpoint import Preprocessing
    from svlm_jax.video import FrameStream, resize_frames

    ckpt, pre = _frames_ckpt(tmp_path, model)
    pics = _pictures(16)
    with FrameStream.for_model(iter(pics), ckpt, source_fps=8, max_pixels=None) as fs:
        secs = list(fs)
    assert (fs.fps, fs.sampling, fs.min_pixels, fs.max_pixels) == (4, "grid", 56 * 56, 56 * 56)
    assert [s.frames.shape for s in secs] == [(4, 28, 56, 3)] * 2
    np.testing.assert_array_equal(secs[0].frames[1], resize_frames(pics[2][None], 28, 56)[0])  # the pil resize
    with FrameStream.for_model(iter(pics), ckpt, source_fps=8, fps=2, max_pixels=112 * 112) as fs:
        assert (fs.fps, fs.sampling) == (2, "grid") and next(fs).frames.shape == (2, 84, 112, 3)
    bare = tmp_path / "bare"
    svlm_jax.save(bare, *model)
    with FrameStream.for_model(iter(pics), bare, source_fps=8) as fs:
        assert (fs.fps, fs.sampling, fs.max_pixels) == (2, "original", Preprocessing().max_pixels)
    with FrameStream.for_model(iter(pics), pre.replace(fps=1), source_fps=8) as fs:  # a Preprocessing works too
        assert fs.fps == 1 and next(fs).frames.shape == (1, 28, 56, 3)


def test_evaluations_make_frames_from_the_checkpoint(model, tmp_path):
    """The commentary evaluations (generate of Inf-Streams / LiveSports) and streaming VQA make their frames
    from preprocessing.json, flags over it, and log the resolved settings (a changed file refuses a resume)."""
    import dataclasses

    from experiments import eval_inf_streams
    from svlm_jax.eval.vqa import streaming as vqa_streaming

    ckpt, pre = _frames_ckpt(tmp_path, model)
    argv = ["generate", "--data", str(tmp_path), "--ckpt", ckpt, "--out", str(tmp_path / "out")]
    *_, got, settings = eval_inf_streams.stream_settings(eval_inf_streams.parse_args(argv))
    assert got == pre and {k: settings[k] for k in dataclasses.asdict(pre)} == dataclasses.asdict(pre)
    a = eval_inf_streams.parse_args(argv + ["--fps", "2", "--max-pixels", str(112 * 112)])
    assert eval_inf_streams.load_setup(a).preprocessing == pre.replace(fps=2, max_pixels=112 * 112)

    lane = vqa_streaming.Lane(video=str(tmp_path / "frames"), start=0.0, seconds=2, asks={}, stream_id=0)
    (tmp_path / "frames").mkdir()
    from PIL import Image

    for i, pic in enumerate(_pictures(6)):  # a frame folder at 3 fps, as MVBench's
        Image.fromarray(pic).save(tmp_path / "frames" / f"{i:05d}.jpg")
    with vqa_streaming._seconds(lane, pre) as fs:
        assert (fs.fps, fs.sampling) == (4, "grid") and next(fs).frames.shape == (4, 28, 56, 3)
