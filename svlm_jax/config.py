"""Frozen model configs for Qwen2.5-VL: vision tower, text decoder, and the whole model.

Configs are hashable so they can be static arguments of jitted functions. `ModelConfig.from_hf`
reads a Hugging Face `config.json` in either the flat hub layout (text fields at the top level) or
the nested `text_config` layout that transformers writes in memory.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """The Qwen2.5-VL vision transformer (window attention ViT with a 2x2 patch merger)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    tokens_per_second: float = 2
    # HF hard-codes 1e-6 for every vision RMSNorm; it is not read from the checkpoint config.
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row of `pixel_values`: C * tp * p * p."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged units (4 for the released models: 112 px / 14 / 2)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig:
    """The Qwen2 decoder with multimodal rotary embeddings (M-RoPE)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The whole VLM: vision tower + decoder + the special token ids that splice them together.

    `dtype` is the compute dtype; parameters keep whatever dtype they were loaded with. `attention` picks the
    decoder's attention kernel: "einsum" (grouped einsums, fp32 softmax), "xla" (`jax.nn.dot_product_attention`
    lowered by XLA) or "cudnn" (the same call as a fused cuDNN kernel; GPU, bf16/fp16 only). All three compute
    the same function.
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    dtype: str = "float32"
    attention: str = "einsum"

    def __post_init__(self):
        t, v = self.text, self.vision
        checks = [
            (self.dtype in _DTYPES, f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}"),
            (self.attention in ATTENTION_IMPLS,
             f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}"),
            (t.num_attention_heads % t.num_key_value_heads == 0,
             f"num_attention_heads {t.num_attention_heads} must be a multiple of num_key_value_heads "
             f"{t.num_key_value_heads}"),
            (2 * sum(t.mrope_section) == t.head_dim,
             f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}"),
            (v.out_hidden_size == t.hidden_size,
             f"vision out_hidden_size {v.out_hidden_size} must equal text hidden_size {t.hidden_size}"),
            (v.head_dim % 4 == 0, f"vision head_dim {v.head_dim} must be a multiple of 4"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Invalid ModelConfig: {msg}.")

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- presets
    @classmethod
    def qwen25vl_7b(cls, **kw) -> "ModelConfig":
        """Qwen2.5-VL-7B-Instruct (and StreamingVLM, which shares its architecture)."""
        return cls(**kw)

    @classmethod
    def qwen25vl_3b(cls, **kw) -> "ModelConfig":
        """Qwen2.5-VL-3B-Instruct (tied embeddings)."""
        return cls(
            vision=VisionConfig(out_hidden_size=2048),
            text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                            num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                            tie_word_embeddings=True),
            **kw,
        )

    @classmethod
    def tiny(cls, *, tie_word_embeddings: bool = True, vocab_size: int = 1024, **kw) -> "ModelConfig":
        """A ~0.25M-parameter model for tests; special ids sit at the top of its small vocab."""
        return cls(
            vision=VisionConfig(depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
                                fullatt_block_indexes=(1, 3), out_hidden_size=64),
            text=TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            mrope_section=(2, 3, 3), tie_word_embeddings=tie_word_embeddings,
                            max_position_embeddings=2048),
            image_token_id=vocab_size - 24, video_token_id=vocab_size - 23,
            vision_start_token_id=vocab_size - 22, vision_end_token_id=vocab_size - 21,
            bos_token_id=vocab_size - 20, eos_token_id=vocab_size - 19,
            **kw,
        )

    @classmethod
    def small_100m(cls, **kw) -> "ModelConfig":
        """A ~100M-parameter model with the 7B's head layout, for CPU benchmarks."""
        return cls(
            vision=VisionConfig(depth=4, hidden_size=256, intermediate_size=704, num_heads=4,
                                fullatt_block_indexes=(3,), out_hidden_size=512),
            text=TextConfig(vocab_size=152064, hidden_size=512, intermediate_size=1536,
                            num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=1,
                            mrope_section=(16, 24, 24), tie_word_embeddings=True),
            **kw,
        )

    @classmethod
    def preset(cls, name: str, **kw) -> "ModelConfig":
        """Look a preset up by name: tiny, 100m, 3b, 7b."""
        table = {"tiny": cls.tiny, "100m": cls.small_100m, "3b": cls.qwen25vl_3b, "7b": cls.qwen25vl_7b}
        if name not in table:
            from svlm_jax.errors import ConfigError

            raise ConfigError(f"Unknown preset {name!r}; choose one of {sorted(table)}.")
        return table[name](**kw)

    # ---------------------------------------------------------------- HF interop
    @classmethod
    def from_hf(cls, src: str | os.PathLike | dict[str, Any], **kw) -> "ModelConfig":
        """Build a config from a HF Qwen2.5-VL `config.json` (path, directory or dict).

        Accepts the flat hub layout and the nested `text_config` layout; `rope_scaling` (4.x) and
        `rope_parameters` (5.x) both give the mrope sections.
        """
        from svlm_jax.errors import ConfigError

        where = "the config dict"
        if isinstance(src, dict):
            d = src
        else:
            path = os.path.join(src, "config.json") if os.path.isdir(src) else os.fspath(src)
            where = path
            if not os.path.exists(path):
                raise FileNotFoundError(f"No HF config at {path}; pass a checkpoint directory or its config.json.")
            try:
                with open(path, encoding="utf-8") as f:
                    d = json.load(f)
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"{path} is not valid JSON ({e}); it may be truncated: copy it again.") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{where} holds a {type(d).__name__}, not a JSON object; pass a Qwen2.5-VL config.json.")
        if d.get("model_type", "qwen2_5_vl") not in ("qwen2_5_vl", "qwen2_5_vl_text"):
            raise ConfigError(f"{where} describes a {d['model_type']!r} model; only Qwen2.5-VL (model_type "
                              f"'qwen2_5_vl') checkpoints can be converted.")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in d and k not in (d.get("text_config") or {})]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}; pass a complete Qwen2.5-VL config.json.")
        text = dict(d)
        text.update(d.get("text_config") or {})
        vis = d.get("vision_config") or {}
        rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
        mrope = rope.get("mrope_section", [16, 24, 24])
        theta = rope.get("rope_theta", text.get("rope_theta", 1e6))
        vfields = {f.name for f in dataclasses.fields(VisionConfig)} - {"rms_norm_eps"}
        vision = VisionConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                 for k, v in vis.items() if k in vfields})
        tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        tcfg = TextConfig(
            vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
            mrope_section=tuple(mrope), tie_word_embeddings=bool(tie),
            max_position_embeddings=text.get("max_position_embeddings", 128000),
        )
        ids = {}
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                     "bos_token_id", "eos_token_id"):
            val = d.get(name, text.get(name))
            if isinstance(val, list):
                val = val[0]
            if val is not None:
                ids[name] = int(val)
        return cls(vision=vision, text=tcfg, **ids, **kw)

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (flat hub layout, transformers 4.52 keys)."""
        t, v = self.text, self.vision
        vis = {f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name != "rms_norm_eps"}
        vis["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
        vis["model_type"] = "qwen2_5_vl"
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta, "hidden_act": "silu",
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "tie_word_embeddings": t.tie_word_embeddings,
            "max_position_embeddings": t.max_position_embeddings, "max_window_layers": t.num_hidden_layers,
            "use_sliding_window": False, "sliding_window": 32768, "attention_dropout": 0.0,
            "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "torch_dtype": "bfloat16" if self.dtype == "bfloat16" else "float32",
            "vision_config": vis,
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that `from_json` turns back into an equal config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelConfig":
        v = {k: tuple(x) if isinstance(x, list) else x for k, x in d["vision"].items()}
        t = {k: tuple(x) if isinstance(x, list) else x for k, x in d["text"].items()}
        rest = {k: x for k, x in d.items() if k not in ("vision", "text")}
        return cls(vision=VisionConfig(**v), text=TextConfig(**t), **rest)
