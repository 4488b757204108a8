"""HF <-> svlm-jax converters: logits parity through both directions, every layout, and every bad input."""
import copy
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import save_file as torch_save_file  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

import svlm_jax  # noqa: E402
from converters import hf_to_jax, jax_to_hf, safetensors_io  # noqa: E402
from converters.keys import normalize_key  # noqa: E402
from svlm_jax import ModelConfig, forward  # noqa: E402
from svlm_jax.checkpoint import params_metadata  # noqa: E402
from tests.hf_reference import hf_state_numpy, noisy_hf_model, random_video_pixels  # noqa: E402

TOL = 1e-4
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_model(request):
    cfg = ModelConfig.tiny(tie_word_embeddings=request.param)
    return cfg, noisy_hf_model(cfg, seed=11)


def _video_inputs(cfg):
    """Text, then a 2x8x8-patch video (16 merged tokens, 4 windows), then text."""
    grid = [[2, 8, 8]]
    ids = [5, 6, cfg.vision_start_token_id] + [cfg.video_token_id] * 32 + [cfg.vision_end_token_id, 7, 8, 9]
    vision = dict(pixel_values_videos=random_video_pixels(grid, cfg.vision.patch_dim, 4), video_grid_thw=grid,
                  second_per_grid_ts=[1.0])
    return np.array([ids]), vision


def _hf_logits(model, cfg):
    ids, vision = _video_inputs(cfg)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), **{k: torch.as_tensor(np.asarray(v)) for k, v in vision.items()})
    return out.logits.float().numpy()


def _jax_logits(ckpt):
    cfg, params = svlm_jax.load(ckpt, dtype=jnp.float32)
    ids, vision = _video_inputs(cfg)
    return np.asarray(forward(cfg, params, ids, **vision))


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _write_new_names(model, directory, *, with_lm_head):
    """A safetensors in transformers >= 4.52 in-memory names (model.language_model.*, model.visual.*)."""
    directory.mkdir()
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state)
    if not with_lm_head:
        state.pop("lm_head.weight")
    torch_save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


LAYOUTS = {
    "single": lambda m, d: m.save_pretrained(d),
    "sharded": lambda m, d: m.save_pretrained(d, max_shard_size="200KB"),
    # The tied variant keeps the (equal) lm_head.weight, which the converter must accept and drop.
    "new-names": lambda m, d: _write_new_names(m, d, with_lm_head=True),
    "bf16": lambda m, d: copy.deepcopy(m).to(torch.bfloat16).save_pretrained(d, max_shard_size="100KB"),
    "bin": lambda m, d: m.save_pretrained(d, safe_serialization=False),
    "bin-sharded": lambda m, d: m.save_pretrained(d, max_shard_size="200KB", safe_serialization=False),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_round_trip_logits(hf_model, layout, tmp_path):
    cfg, model = hf_model
    model = copy.deepcopy(model)
    LAYOUTS[layout](model, tmp_path / "hf")
    if layout == "bf16":
        # The reference: bf16-rounded weights, fp32 compute (rounding the weights only; a round trip of
        # the whole module through bf16 would also round the rotary inv_freq buffers).
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    ref = _hf_logits(model, cfg)

    summary = hf_to_jax.convert(tmp_path / "hf", tmp_path / "jax", progress=False)
    want_dtype = "bfloat16" if layout == "bf16" else "float32"
    assert summary["dtype"] == want_dtype
    assert {str(dt) for _, dt in params_metadata(tmp_path / "jax").values()} == {want_dtype}
    # torch.save keeps the shared lm_head of a tied model; safetensors via save_pretrained drops it.
    carries_lm_head = layout in ("new-names", "bin", "bin-sharded")
    assert summary["dropped_tied_lm_head"] == (carries_lm_head and cfg.text.tie_word_embeddings)
    assert (tmp_path / "jax" / "generation_config.json").is_file()
    diff = _maxdiff(_jax_logits(tmp_path / "jax"), ref)
    print(f"{layout} tie={cfg.text.tie_word_embeddings}: hf_to_jax logits max |diff| = {diff:.3e}")
    assert diff <= TOL

    jax_to_hf.convert(tmp_path / "jax", tmp_path / "back", max_shard_size="150KB", progress=False)
    files = sorted(p.name for p in (tmp_path / "back").iterdir())
    assert "model.safetensors.index.json" in files and "generation_config.json" in files
    for f in (tmp_path / "back").glob("*.safetensors"):
        header, _ = safetensors_io.read_header(f)
        assert {v["dtype"] for v in header.values()} == {"BF16" if layout == "bf16" else "F32"}
        assert all(not k.startswith(("model.language_model.", "model.visual.")) for k in header)
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "back", torch_dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    sd, ref_sd = back.state_dict(), model.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    diff = _maxdiff(_hf_logits(back, cfg), ref)
    print(f"{layout} tie={cfg.text.tie_word_embeddings}: jax_to_hf logits max |diff| = {diff:.3e}")
    assert diff <= TOL


def test_dtype_option_and_single_file_output(hf_model, tmp_path):
    cfg, model = hf_model
    model.save_pretrained(tmp_path / "hf")
    hf_to_jax.convert(tmp_path / "hf", tmp_path / "jax", dtype="bfloat16", progress=False)
    assert svlm_jax.load(tmp_path / "jax")[0].dtype == "bfloat16"
    jax_to_hf.convert(tmp_path / "jax", tmp_path / "back", dtype="float32", progress=False)
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and ModelConfig.from_hf(config) == cfg
    back = dict(safetensors_io.iter_tensors(tmp_path / "back" / "model.safetensors"))
    ref = {normalize_key(k): v for k, v in hf_state_numpy(model).items()}
    assert back.keys() == ref.keys()
    for key, value in ref.items():  # every weight went through bfloat16 on the way
        np.testing.assert_array_equal(back[key], value.astype(jnp.bfloat16).astype(np.float32))


# ----------------------------------------------------------------------------------------- bad inputs
def _base_state(cfg):
    return {normalize_key(k): v for k, v in hf_state_numpy(noisy_hf_model(cfg, seed=2)).items()}


def _bad(case, cfg, state):
    """Mutate a legacy-named state dict into one bad case; returns the error pattern it must raise."""
    if case == "unmapped":
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
        return r"Unmapped checkpoint key 'model\.layers\.0\.self_attn\.rotary_emb\.inv_freq'"
    if case == "missing":
        del state["model.norm.weight"]
        return r"missing 1 tensor\(s\), first 'model\.norm\.weight' with shape \(64,\)"
    if case == "duplicate":
        state["model.language_model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"]
        return (r"Duplicate checkpoint tensor: '.*layers\.1\.mlp\.up_proj\.weight' and "
                r"'.*layers\.1\.mlp\.up_proj\.weight'")
    if case == "shape":
        state["visual.blocks.2.attn.qkv.weight"] = np.zeros((96, 31), np.float32)
        return r"Shape mismatch for 'visual\.blocks\.2\.attn\.qkv\.weight': checkpoint has \(96, 31\), config " \
               r"expects \(96, 32\)"
    if case == "extra-layer":
        state["model.layers.7.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"]
        return r"'model\.layers\.7\.mlp\.up_proj\.weight' .*has no place in this config"
    if case == "tied-lm-head-differs":
        state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
        return r"'lm_head\.weight' differs from 'model\.embed_tokens\.weight'"
    raise AssertionError(case)


def _snapshot(directory: pathlib.Path):
    return sorted((str(p.relative_to(directory)), p.read_bytes() if p.is_file() else b"")
                  for p in directory.rglob("*"))


def _assert_fails_cleanly(src, tmp_path, pattern):
    """The conversion must raise `pattern`, leave a fresh DST absent and an existing DST byte-identical."""
    with pytest.raises((KeyError, ValueError, FileNotFoundError), match=pattern):
        hf_to_jax.convert(src, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()
    existing = tmp_path / "existing"
    existing.mkdir(exist_ok=True)
    (existing / "keep.txt").write_text("old checkpoint")
    before = _snapshot(existing)
    with pytest.raises((KeyError, ValueError, FileNotFoundError), match=pattern):
        hf_to_jax.convert(src, existing, overwrite=True, progress=False)
    assert _snapshot(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


@pytest.mark.parametrize("case", ["unmapped", "missing", "duplicate", "shape", "extra-layer", "tied-lm-head-differs"])
def test_bad_safetensors_leave_dst_untouched(case, tmp_path):
    cfg = ModelConfig.tiny(tie_word_embeddings=True)
    state = _base_state(cfg)
    pattern = _bad(case, cfg, state)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg.to_hf()))
    np_save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    _assert_fails_cleanly(src, tmp_path, pattern)


def test_bad_bin_fails_while_streaming(tmp_path):
    # .bin shards cannot be checked up front; the error must still come before anything lands at DST.
    cfg = ModelConfig.tiny(tie_word_embeddings=False)
    state = _base_state(cfg)
    pattern = _bad("shape", cfg, state)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg.to_hf()))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src / "pytorch_model.bin")
    _assert_fails_cleanly(src, tmp_path, pattern)


def test_missing_config_empty_and_absent_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_fails_cleanly(tmp_path / "empty", tmp_path, r"has no config\.json")
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text(json.dumps(ModelConfig.tiny().to_hf()))
    _assert_fails_cleanly(tmp_path / "weightless", tmp_path, r"No weights in .*weightless")
    _assert_fails_cleanly(tmp_path / "nowhere", tmp_path, r"nowhere does not exist")


def test_jax_to_hf_refuses_bad_source_and_busy_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="No svlm-jax checkpoint at"):
        jax_to_hf.convert(tmp_path / "nowhere", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert jax_to_hf.parse_size("5GB") == 5 * 10**9 and jax_to_hf.parse_size("1GiB") == 2**30
    with pytest.raises(ValueError, match="Cannot read shard size '5 parsecs'"):
        jax_to_hf.parse_size("5 parsecs")


def test_cli_summary_and_errors(hf_model, tmp_path, capsys):
    cfg, model = hf_model
    model.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
    assert hf_to_jax.main([str(tmp_path / "hf"), str(tmp_path / "jax"), "--no-progress"]) == 0
    n = 80 if cfg.text.tie_word_embeddings else 81
    assert f"hf_to_jax: {n} tensors, " in capsys.readouterr().out
    assert hf_to_jax.main([str(tmp_path / "hf"), str(tmp_path / "jax"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf_to_jax: error: ") and "non-empty directory" in err and "\n" not in err
    assert jax_to_hf.main([str(tmp_path / "jax"), str(tmp_path / "back"), "--no-progress"]) == 0
    assert "jax_to_hf: " in capsys.readouterr().out and (tmp_path / "back" / "model.safetensors").is_file()


def test_module_entry_point(tmp_path):
    cfg = ModelConfig.tiny(tie_word_embeddings=False)
    noisy_hf_model(cfg).save_pretrained(tmp_path / "hf")
    run = subprocess.run([sys.executable, "-m", "converters.hf_to_jax", str(tmp_path / "hf"), str(tmp_path / "jax"),
                          "--dtype", "bfloat16"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and "81 tensors, 310,176 params, bfloat16" in lines[0]
    assert "hf_to_jax: 100%" in run.stderr  # the progress bar


# ------------------------------------------------------------------------------------ half precision
def _half_hf(cfg, dtype, directory):
    """A tiny HF checkpoint written as safetensors in `dtype` (config torch_dtype too), with a tokenizer."""
    from svlm_jax.tokenizer import word_level_tokenizer

    noisy_hf_model(cfg, seed=5).to(getattr(torch, dtype)).save_pretrained(directory)
    word_level_tokenizer(["red", "ball"], cfg).save(str(directory / "tokenizer.json"))
    header, _ = safetensors_io.read_header(directory / "model.safetensors")
    assert {v["dtype"] for v in header.values()} == {"BF16" if dtype == "bfloat16" else "F16"}
    return directory


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_converts_loads_and_streams_without_warnings(dtype, tmp_path, capsys):
    """bf16 and fp16 are floats: converting either way, loading and streaming print and raise no warning."""
    import warnings

    from experiments.forward_demo import write_synthetic
    from experiments.stream import main as stream_main

    cfg = ModelConfig.tiny()
    src = _half_hf(cfg, dtype, tmp_path / "hf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = hf_to_jax.convert(src, tmp_path / "jax", progress=False)
        cfg2, params = svlm_jax.load(tmp_path / "jax")
        jax_to_hf.convert(tmp_path / "jax", tmp_path / "back", progress=False)
    assert [str(w.message) for w in caught] == []
    assert summary["dtype"] == dtype and cfg2.dtype == dtype
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
    for cli, argv in ((hf_to_jax.main, [str(src), str(tmp_path / "cli"), "--no-progress"]),
                      (jax_to_hf.main, [str(tmp_path / "cli"), str(tmp_path / "cli_back"), "--no-progress"]),
                      (stream_main, ["--ckpt", str(tmp_path / "cli"), "--video",
                                     write_synthetic(str(tmp_path / "clip.mp4"), 2.0, rate=8), "--greedy",
                                     "--max-new-tokens", "3", "--duration", "2", "--jsonl"])):
        assert cli(argv) == 0
        out, err = capsys.readouterr()
        assert "warning" not in err.lower(), err
    assert [(json.loads(x)["t0"], json.loads(x)["t1"]) for x in out.splitlines()] == [(0.0, 1.0), (1.0, 2.0)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_nan_is_reported_by_name(dtype, tmp_path, capsys):
    """The NaN/inf check runs on bf16 and fp16 tensors: hf_to_jax, load and jax_to_hf each name the tensor."""
    cfg = ModelConfig.tiny()
    src = _half_hf(cfg, dtype, tmp_path / "hf")
    state = dict(safetensors_io.iter_tensors(src / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"][2, 3] = np.inf if dtype == "float16" else np.nan
    safetensors_io.write_file(src / "model.safetensors", state, {"format": "pt"})
    assert hf_to_jax.main([str(src), str(tmp_path / "jax"), "--no-progress"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["hf_to_jax: warning: Tensor 'model.layers.1.mlp.up_proj.weight' in model.safetensors holds "
                     "NaN or inf; the converted model's outputs will be garbage."]
    with pytest.warns(UserWarning, match="1 parameter\\(s\\) hold NaN or inf, first 'text/layers_1/mlp/up_proj/"):
        svlm_jax.load(tmp_path / "jax")
    assert jax_to_hf.main([str(tmp_path / "jax"), str(tmp_path / "back"), "--no-progress"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'text/layers_1/mlp/up_proj/kernel'" in lines[0] and "NaN or inf" in lines[0], lines
