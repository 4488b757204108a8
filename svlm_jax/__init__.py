"""svlm-jax: StreamingVLM (Qwen2.5-VL with a streaming cache) in JAX/Flax."""
from svlm_jax.config import ModelConfig, TextConfig, VisionConfig
from svlm_jax.model import count_params, forward, init_params, param_shapes

__all__ = ["ModelConfig", "TextConfig", "VisionConfig", "forward", "init_params", "param_shapes",
           "count_params", "load", "save"]


def __getattr__(name):
    # Orbax is heavy to import; load it only when checkpoints are used.
    if name in ("load", "save"):
        from svlm_jax import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
