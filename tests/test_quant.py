"""int8 weight-only quantization: the rounding bound, int8 layers equal their dequantized float twins, and a
quantized checkpoint loads and streams."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svlm_jax
from svlm_jax import ModelConfig, forward
from svlm_jax.cache import StreamConfig
from svlm_jax.quant import dequantize_kernel, quantize_kernel, quantize_params, weight_bytes
from svlm_jax.stream import SamplingConfig, Streamer, synthetic_seconds
from tests.test_stream import WORDS, noisy_params, small

CFG = ModelConfig.tiny()


def _dequantized_twin(qtree):
    """The float tree whose kernels are exactly the dequantized int8 kernels."""
    if not isinstance(qtree, dict):
        return qtree
    out = {}
    for k, v in qtree.items():
        if k == "kernel_int8":
            out["kernel"] = dequantize_kernel(v, qtree["kernel_scale"])
        elif k == "embedding_int8":
            out["embedding"] = v.astype(jnp.float32) * qtree["embedding_scale"][:, None]
        elif k in ("kernel_scale", "embedding_scale"):
            continue
        else:
            out[k] = _dequantized_twin(v)
    return out


def test_quantize_kernel_bound():
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    w[:, 5] = 0.0  # an all-zero column
    q, s = quantize_kernel(w)
    assert q.dtype == jnp.int8 and s.shape == (48,)
    err = np.abs(np.asarray(dequantize_kernel(q, s)) - w)
    assert np.all(err <= np.asarray(s)[None] / 2 + 1e-7)
    assert np.all(np.asarray(q)[:, 5] == 0)
    assert np.abs(np.asarray(q)).max() == 127


@pytest.mark.parametrize("tied", [True, False])
def test_int8_model_equals_dequantized_float(tied):
    """Every quantized matmul equals the float matmul with the dequantized kernel (text + image input)."""
    cfg = ModelConfig.tiny(tie_word_embeddings=tied)
    params = noisy_params(cfg, seed=3)
    qp = quantize_params(cfg, params, vision=True)
    names = {str(p[-1].key) for p, _ in jax.tree_util.tree_flatten_with_path(qp)[0]}
    assert "kernel_int8" in names and ("embedding_int8" in names) == tied
    twin = _dequantized_twin(qp)
    assert jax.tree_util.tree_structure(twin) == jax.tree_util.tree_structure(params)
    ids = np.array([[1, 5, 7, 9, 11, 3, 2]])
    a = np.asarray(forward(cfg, qp, ids))
    b = np.asarray(forward(cfg, twin, ids))
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    # int8 is a real approximation: close to the float model, not equal to it.
    c = np.asarray(forward(cfg, params, ids))
    assert 0 < np.abs(a - c).max() < 0.1 * np.abs(c).max()
    assert weight_bytes(qp) < weight_bytes(params)


def test_load_quantized_checkpoint_streams(tmp_path):
    from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

    params = noisy_params(CFG, seed=1)
    svlm_jax.save(tmp_path / "ckpt", CFG, params)
    cfg, qp = svlm_jax.load(tmp_path / "ckpt", quant="int8")
    assert qp["text"]["layers_0"]["mlp"]["up_proj"]["kernel_int8"].dtype == jnp.int8
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, cfg))
    st = Streamer(cfg, qp, tok, small(), sampling=SamplingConfig(greedy=True))
    out = [st.step([s])[0] for s in synthetic_seconds(cfg, (4, 4), seconds=3, seed=2)]
    assert all(c is not None and 1 <= c.n_tokens <= 6 for c in out)
    with pytest.raises(ValueError, match="quant must be one of"):
        svlm_jax.load(tmp_path / "ckpt", quant="int4")


def test_kv_dtypes_stream_with_the_fp32_policy():
    """bf16 and int8 K/V: the same retained tokens as the float32 cache at every second of a forced stream that
    evicts, logits near float32's, and fewer bytes."""
    from svlm_jax.cache import cache_bytes
    from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

    params = noisy_params(CFG, seed=2)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))
    rng = np.random.default_rng(0)
    word_ids = [tok.encode(" " + w)[0] for w in WORDS]
    force = [[int(x) for x in rng.choice(word_ids, size=rng.integers(0, 5))] for _ in range(9)]
    runs = {}
    for kv in ("float32", "bfloat16", "int8"):
        scfg = small(kv_dtype=kv)
        st = Streamer(CFG, params, tok, scfg, sampling=SamplingConfig(greedy=True), keep_logits=True,
                      previous_text="red ball bounces")
        kept, logits = [], []
        for i, sec in enumerate(synthetic_seconds(CFG, (4, 4), seconds=9, seed=3)):
            st.step([sec], force=[force[i]])
            kept.append(st.hosts[0].retained()[0].tolist())
            logits.append(st.last_prefill_logits[0])
        runs[kv] = (kept, np.stack(logits), cache_bytes(CFG, scfg))
    ref_kept, ref_logits, ref_bytes = runs["float32"]
    scale = np.abs(ref_logits).max()
    for kv, tol in (("bfloat16", 0.02), ("int8", 0.05)):
        kept, logits, nbytes = runs[kv]
        assert kept == ref_kept  # the policy never looks at K/V values
        assert np.abs(logits - ref_logits).max() < tol * scale
        assert nbytes < ref_bytes
    assert runs["int8"][2] < runs["bfloat16"][2]
    with pytest.raises(ValueError, match="kv_dtype must be one of"):
        small(kv_dtype="int4")


@pytest.mark.parametrize("kv", ["float32", "bfloat16"])
def test_keys_rotated_once_equal_rotation_at_attention(kv):
    """Over a 24-s stream that evicts (3-s vision window) and renumbers positions every second, decoding with the keys rotated once per
    turn gives the logits of rotating every key at every step (the per-token path), at every token."""
    from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

    params = noisy_params(CFG, seed=4)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, CFG))
    runs = {}
    for rot in ("once", "per_token"):
        st = Streamer(CFG, params, tok, small(vision_window=3, kv_dtype=kv), sampling=SamplingConfig(greedy=True),
                      keep_logits=True, previous_text="red ball bounces what a shot", rotate_keys=rot)
        toks, logits = [], []
        for sec in synthetic_seconds(CFG, (4, 4), seconds=24, seed=6):
            c = st.step([sec])[0]
            toks.append(c.tokens)
            logits.append(st.last_logits[0, :c.n_tokens])
        runs[rot] = toks, np.concatenate(logits)
    assert runs["once"][0] == runs["per_token"][0]
    tol = 1e-5 if kv == "float32" else 2e-2
    np.testing.assert_allclose(runs["once"][1], runs["per_token"][1], atol=tol * np.abs(runs["per_token"][1]).max())
