"""Test setup: CPU only, float32 matmuls at full precision, a tiny model shared across tests."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen_tok():
    """The real Qwen2.5-VL vocabulary (svlm_jax.vocab), built once per session."""
    from svlm_jax.tokenizer import ChatTokenizer

    return ChatTokenizer.qwen25vl()
