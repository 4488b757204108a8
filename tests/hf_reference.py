"""Builds tiny Hugging Face Qwen2.5-VL references (transformers 4.52.4, torch CPU) for parity tests.

Only the tests import this; it needs the `torch` extra.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from converters.keys import state_dict_to_params
from svlm_jax.config import ModelConfig


def hf_config(cfg: ModelConfig) -> Qwen2_5_VLConfig:
    """The HF config equal to `cfg`, with eager attention for tight fp32 parity."""
    hf = Qwen2_5_VLConfig(**cfg.to_hf())
    hf._attn_implementation = "eager"
    hf.vision_config._attn_implementation = "eager"
    return hf


def noisy_hf_model(cfg: ModelConfig, seed: int = 0, scale: float = 0.05) -> Qwen2_5_VLForConditionalGeneration:
    """A random HF model in eval mode with noise added to every parameter, biases and norms included."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def hf_state_numpy(model) -> dict[str, np.ndarray]:
    """state_dict with legacy-or-new names as numpy fp32 (tied lm_head dropped, as save_pretrained does)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def jax_params_from_hf(model, cfg: ModelConfig) -> dict:
    """Our params tree holding the HF model's weights."""
    return state_dict_to_params(hf_state_numpy(model), cfg)


def random_video_pixels(grid_thw, patch_dim: int, seed: int = 0) -> np.ndarray:
    """Random normalised pixel rows [sum(t*h*w), patch_dim] for the given grids."""
    n = int(sum(int(np.prod(g)) for g in grid_thw))
    return np.random.default_rng(seed).standard_normal((n, patch_dim)).astype(np.float32)
