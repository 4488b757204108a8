"""The declarative table between HF Qwen2.5-VL state-dict keys and svlm-jax parameter paths.

Each rule maps a legacy HF key pattern (`visual.*`, `model.*`, `lm_head.*`) to a '/'-joined path in
the params tree and a named transform. 4.52+ in-memory names (`model.visual.*`,
`model.language_model.*`) are normalised to the legacy form first.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from svlm_jax.config import ModelConfig

# (HF legacy key template, params path template, transform). `{i}` matches a layer index and any
# other `{name}` a word; both sides must use the same placeholders.
RULES: tuple[tuple[str, str, str], ...] = (
    ("visual.patch_embed.proj.weight", "visual/patch_embed/kernel", "patch_embed"),
    ("visual.blocks.{i}.norm{n}.weight", "visual/blocks_{i}/norm{n}/scale", "copy"),
    ("visual.blocks.{i}.attn.{proj}.weight", "visual/blocks_{i}/attn/{proj}/kernel", "linear"),
    ("visual.blocks.{i}.attn.{proj}.bias", "visual/blocks_{i}/attn/{proj}/bias", "copy"),
    ("visual.blocks.{i}.mlp.{proj}.weight", "visual/blocks_{i}/mlp/{proj}/kernel", "linear"),
    ("visual.blocks.{i}.mlp.{proj}.bias", "visual/blocks_{i}/mlp/{proj}/bias", "copy"),
    ("visual.merger.ln_q.weight", "visual/merger/ln_q/scale", "copy"),
    ("visual.merger.mlp.{i}.weight", "visual/merger/mlp_{i}/kernel", "linear"),
    ("visual.merger.mlp.{i}.bias", "visual/merger/mlp_{i}/bias", "copy"),
    ("model.embed_tokens.weight", "text/embed_tokens/embedding", "copy"),
    ("model.layers.{i}.{norm}.weight", "text/layers_{i}/{norm}/scale", "copy"),
    ("model.layers.{i}.self_attn.{proj}.weight", "text/layers_{i}/self_attn/{proj}/kernel", "linear"),
    ("model.layers.{i}.self_attn.{proj}.bias", "text/layers_{i}/self_attn/{proj}/bias", "copy"),
    ("model.layers.{i}.mlp.{proj}.weight", "text/layers_{i}/mlp/{proj}/kernel", "linear"),
    ("model.norm.weight", "text/norm/scale", "copy"),
    ("lm_head.weight", "lm_head/kernel", "linear"),
)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(re.escape(p) if k % 2 == 0 else (rf"(?P<{p}>\d+)" if p == "i" else rf"(?P<{p}>\w+?)")
                 for k, p in enumerate(parts))
    return re.compile(f"^{rx}$")


_COMPILED = tuple((_template_regex(k), _template_regex(p), k, p, t) for k, p, t in RULES)

# HF -> JAX transforms, and their inverses (JAX -> HF, given the HF shape).
TO_JAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda w: w,
    "linear": lambda w: w.T,
    "patch_embed": lambda w: w.reshape(w.shape[0], -1).T,  # Conv3d (D, C, t, p, p) -> (C*t*p*p, D)
}
TO_HF: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    "copy": lambda w, shape: w,
    "linear": lambda w, shape: w.T,
    "patch_embed": lambda w, shape: w.T.reshape(shape),
}


def normalize_key(key: str) -> str:
    """Map transformers >= 4.52 in-memory names onto the legacy hub names."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def match(key: str) -> tuple[str, str] | None:
    """HF key (either naming) -> (params path, transform name), or None when no rule covers it."""
    key = normalize_key(key)
    for key_rx, _, _, path_tpl, transform in _COMPILED:
        m = key_rx.match(key)
        if m:
            return path_tpl.format(**m.groupdict()), transform
    return None


def hf_key_for(path: str) -> tuple[str, str]:
    """Params path -> (legacy HF key, transform name); the inverse of `match`."""
    for _, path_rx, key_tpl, _, transform in _COMPILED:
        m = path_rx.match(path)
        if m:
            return key_tpl.format(**m.groupdict()), transform
    raise KeyError(f"No HF key maps to params path {path!r}.")


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every legacy HF key this config needs, with its torch shape (lm_head only when untied)."""
    from svlm_jax.model import param_shapes

    out = {}
    flat = flatten(param_shapes(cfg))
    for path, sds in flat.items():
        key, transform = hf_key_for(path)
        shape = tuple(sds.shape)
        if transform == "linear":
            shape = shape[::-1]
        elif transform == "patch_embed":
            v = cfg.vision
            shape = (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
        out[key] = shape
    return out


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, p))
        else:
            out[p] = v
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    """{'a/b/c': leaf} -> nested dict."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


class KeyChecker:
    """Checks HF tensors against a config as they stream past, one (key, shape) at a time.

    `take` maps one key (either naming) to its params path, or to None for a tied checkpoint's
    redundant `lm_head.weight` (the caller then checks it equals the embedding); `finish` reports
    what never came. Every error names the key, and for shape errors both shapes.
    """

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.want = expected_hf_shapes(cfg)  # legacy key -> torch shape
        self.seen: dict[str, str] = {}  # legacy key -> the key as written in the checkpoint

    def take(self, key: str, shape: tuple[int, ...]) -> tuple[str | None, str]:
        """(key, torch shape) -> (params path or None for a tied lm_head, transform name)."""
        hit = match(key)
        if hit is None:
            raise KeyError(f"Unmapped checkpoint key {key!r}: no rule in converters/keys.py covers it.")
        legacy = normalize_key(key)
        if legacy in self.seen:
            raise KeyError(f"Duplicate checkpoint tensor: {key!r} and {self.seen[legacy]!r} are the same "
                           f"weight ({legacy}); keep one naming form.")
        self.seen[legacy] = key
        shape = tuple(int(d) for d in shape)
        if legacy == "lm_head.weight" and self.cfg.text.tie_word_embeddings:
            embed_shape = self.want["model.embed_tokens.weight"]
            if shape != embed_shape:
                raise ValueError(f"Shape mismatch for {key!r}: checkpoint has {shape}, the tied embedding "
                                 f"expects {embed_shape}.")
            return None, "copy"
        if legacy not in self.want:
            raise KeyError(f"Checkpoint key {key!r} ({hit[0]}) has no place in this config; check that "
                           f"config.json belongs to these weights.")
        if shape != self.want[legacy]:
            raise ValueError(f"Shape mismatch for {key!r}: checkpoint has {shape}, config expects "
                             f"{self.want[legacy]}.")
        return hit

    def finish(self) -> None:
        """Raise if any tensor the config needs never came."""
        missing = [k for k in self.want if k not in self.seen]
        if missing:
            raise KeyError(f"Checkpoint is missing {len(missing)} tensor(s), first {missing[0]!r} with shape "
                           f"{self.want[missing[0]]}.")


def to_jax(value: np.ndarray, transform: str) -> np.ndarray:
    """One HF tensor -> its params layout, C-contiguous (copied unless it already was); dtype unchanged."""
    return np.ascontiguousarray(TO_JAX[transform](np.asarray(value)))


def state_dict_to_params(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """A whole in-memory HF state dict (numpy values) -> params tree, with full key/shape checks."""
    checker = KeyChecker(cfg)
    flat = {}
    for key, value in state.items():
        path, transform = checker.take(key, np.shape(value))
        if path is None:
            embed = state.get("model.embed_tokens.weight", state.get("model.language_model.embed_tokens.weight"))
            if embed is None or not np.array_equal(np.asarray(value), np.asarray(embed)):
                raise ValueError(f"{key!r} differs from the token embedding but the config ties them; set "
                                 f"tie_word_embeddings to false in config.json.")
            continue
        flat[path] = to_jax(value, transform)
    checker.finish()
    return unflatten(flat)


def params_to_state_dict(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """params tree -> legacy-named HF state dict (numpy), the inverse of `state_dict_to_params`."""
    shapes = expected_hf_shapes(cfg)
    out = {}
    for path, leaf in flatten(params).items():
        key, transform = hf_key_for(path)
        out[key] = np.ascontiguousarray(TO_HF[transform](np.asarray(leaf), shapes[key]))
    return out
