"""svlm_jax.text: query-chunked attention equals the dense one, in value and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svlm_jax.model import causal_mask
from svlm_jax.text import gqa_attention


@pytest.mark.parametrize("t,chunk", [(13, 4), (16, 8), (9, 32)])
def test_chunked_attention_matches_dense(t, chunk):
    b, n, kv, h = 2, 4, 2, 8
    kq, kk, kv_, kg = jax.random.split(jax.random.key(t), 4)
    q = jax.random.normal(kq, (b, t, n, h))
    k = jax.random.normal(kk, (b, t, kv, h))
    v = jax.random.normal(kv_, (b, t, kv, h))
    # Row 0 left-padded by 3 (its first rows see no key: HF's uniform average), row 1 right-padded by 2.
    am = np.ones((b, t), np.int32)
    am[0, :3], am[1, -2:] = 0, 0
    mask = causal_mask(jnp.asarray(am))
    g = jax.random.normal(kg, (b, t, n, h))

    def loss(q, k, v, c):
        return jnp.sum(gqa_attention(q, k, v, mask, kv, c) * g)

    dense, chunked = gqa_attention(q, k, v, mask, kv), gqa_attention(q, k, v, mask, kv, chunk)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(dense), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(loss, argnums=(0, 1, 2))(q, k, v, c) for c in (None, chunk)]
    for a, c in zip(*grads):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_chunked_attention_bounds_the_logits_memory():
    """Compiled temporaries of a backward pass at T=2048: chunks of 256 need a fraction of dense's."""
    b, t, n, kv, h = 1, 2048, 8, 2, 16
    q = jnp.zeros((b, t, n, h))
    k = v = jnp.zeros((b, t, kv, h))
    mask = causal_mask(jnp.ones((b, t), jnp.int32))

    def temp_bytes(chunk):
        f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(gqa_attention(q, k, v, mask, kv, chunk)), argnums=(0, 1, 2)))
        return f.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    dense = temp_bytes(None)
    assert dense >= b * n * t * t * 4  # the [N, T, T] fp32 logits exist
    assert temp_bytes(256) < dense / 4  # measured: 66 MiB against 386 MiB


@pytest.mark.parametrize("chunk", [None, 4])
def test_dot_product_attention_matches_einsum(chunk):
    """jax.nn.dot_product_attention (attention="xla"; cuDNN's twin on a GPU) equals the einsum path in value
    and gradient, with padding rows that see no key."""
    b, t, n, kv, h = 2, 11, 4, 2, 8
    kq, kk, kv_, kg = jax.random.split(jax.random.key(7), 4)
    q, g = jax.random.normal(kq, (b, t, n, h)), jax.random.normal(kg, (b, t, n, h))
    k, v = jax.random.normal(kk, (b, t, kv, h)), jax.random.normal(kv_, (b, t, kv, h))
    am = np.ones((b, t), np.int32)
    am[0, :3], am[1, -2:] = 0, 0
    mask = causal_mask(jnp.asarray(am))
    outs = {impl: gqa_attention(q, k, v, mask, kv, chunk, impl) for impl in ("einsum", "xla")}
    np.testing.assert_allclose(np.asarray(outs["xla"]), np.asarray(outs["einsum"]), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(lambda q, k, v: jnp.sum(gqa_attention(q, k, v, mask, kv, chunk, impl) * g),
                      argnums=(0, 1, 2))(q, k, v) for impl in ("einsum", "xla")]
    for a, c in zip(*grads):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_model_attention_impl_forward_and_stream():
    """The whole model with attention="xla" equals "einsum": forward logits and a streamed second."""
    from svlm_jax import ModelConfig, forward
    from svlm_jax.stream import SamplingConfig, Streamer, synthetic_seconds
    from tests.test_stream import WORDS, noisy_params, small
    from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer

    cfg = ModelConfig.tiny()
    params = noisy_params(cfg, seed=5)
    ids = np.array([[3, 9, 4, 12, 7, 1], [5, 5, 2, 8, 10, 6]])
    a = forward(cfg, params, ids, attention_mask=np.array([[0, 1, 1, 1, 1, 1], [1] * 6]))
    b = forward(cfg.replace(attention="xla"), params, ids, attention_mask=np.array([[0, 1, 1, 1, 1, 1], [1] * 6]))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(WORDS, cfg))
    runs = []
    for c in (cfg, cfg.replace(attention="xla")):
        st = Streamer(c, params, tok, small(), sampling=SamplingConfig(greedy=True), keep_logits=True)
        toks = [st.step([s])[0].tokens for s in synthetic_seconds(c, (4, 4), seconds=3, seed=4)]
        runs.append((toks, st.last_logits))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attention must be one of"):
        cfg.replace(attention="flash")
