"""The optimizer: AdamW with linear warmup and cosine decay, clipping, freezing and accumulation (Optax).

    MultiSteps(sum over microbatches,                       # gradient accumulation
      chain(scale_by_tokens,                                # / labelled tokens of the whole batch
            partition(train:  chain(clip_by_global_norm, adamw(warmup_cosine)),
                      frozen: set_to_zero)))                # e.g. the vision tower

Each microbatch contributes the gradient of its *summed* token loss; `scale_by_tokens` divides the
accumulated sum by the token count of all microbatches (passed as the `num_tokens` extra argument),
so the loss is a mean over the tokens of the whole accumulated batch, as HF's Trainer computes it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Reference (scripts/sft_stage_1.sh): lr 1e-5, warmup 3%, cosine to 0, wd 0, HF Adam defaults, clip 1.

    total_steps counts optimizer steps; accum_steps microbatches make one step.
    frozen: '/'-joined parameter path prefixes that are not trained (default: the vision tower).
    """

    lr: float = 1e-5
    warmup_ratio: float = 0.03
    total_steps: int = 1000
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    accum_steps: int = 1
    frozen: tuple[str, ...] = ("visual",)

    def __post_init__(self):
        if self.total_steps < 1 or self.accum_steps < 1:
            raise ValueError(f"total_steps ({self.total_steps}) and accum_steps ({self.accum_steps}) must be >= 1.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 over warmup_ratio * total_steps, then cosine decay to end_lr_ratio * lr."""
    warmup = int(round(cfg.warmup_ratio * cfg.total_steps))
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.total_steps, warmup + 1),
                                              end_value=cfg.lr * cfg.end_lr_ratio)


def _path(p) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)


def check_frozen(params: Params, frozen: tuple[str, ...], flag: str = "frozen") -> None:
    """Raise ConfigError naming a `frozen` prefix that matches no parameter, and the valid top-level ones."""
    from svlm_jax.errors import ConfigError

    paths = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for f in frozen:
        pat = re.compile(re.escape(f.strip("/")) + r"(/|$)")
        if not any(pat.match(p) for p in paths):
            tops = sorted({re.sub(r"_\d+$", "_N", "/".join(p.split("/")[:2])) for p in paths})
            raise ConfigError(f"{flag} prefix {f!r} matches no parameter; use 'none' or '/'-joined path prefixes "
                              f"such as {', '.join(sorted({p.split('/')[0] for p in paths}) + tops)} (N a number).")


def param_labels(params: Params, frozen: tuple[str, ...]) -> Params:
    """'frozen' or 'train' for every leaf, by path prefix (e.g. 'visual', 'visual/blocks_0', 'text/embed_tokens')."""
    pats = [re.compile(re.escape(f.strip("/")) + r"(/|$)") for f in frozen]
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if any(r.match(_path(p)) for r in pats) else "train", params)


def subtree_frozen(params: Params, frozen: tuple[str, ...], prefix: str) -> bool:
    """True when every parameter under `prefix` is frozen (lets the step skip that part's backward)."""
    labels = param_labels(params, frozen)
    sub = labels.get(prefix) if isinstance(labels, dict) else None
    return sub is not None and all(x == "frozen" for x in jax.tree_util.tree_leaves(sub))


def _decay_mask(params: Params) -> Params:
    """Weight decay on matrices (kernels, embeddings) only, not on biases or norm scales."""
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


class ScaleByTokensState(NamedTuple):
    """scale_by_tokens keeps no state."""


def scale_by_tokens() -> optax.GradientTransformationExtraArgs:
    """Divide the (summed) gradient by the `num_tokens` extra argument."""

    def init(params):
        del params
        return ScaleByTokensState()

    def update(updates, state, params=None, *, num_tokens=1.0, **extra):
        del params, extra
        scale = 1.0 / jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: OptimConfig, params: Params) -> optax.GradientTransformationExtraArgs:
    """The full transformation; call `update(grads, state, params, num_tokens=...)` once per microbatch."""
    check_frozen(params, cfg.frozen)
    labels = param_labels(params, cfg.frozen)
    if all(x == "frozen" for x in jax.tree_util.tree_leaves(labels)):
        raise ValueError(f"Every parameter is frozen by {cfg.frozen}; freeze less (e.g. --freeze visual).")
    train = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
        optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    mask=_decay_mask),
    )
    tx = optax.chain(scale_by_tokens(), optax.partition({"train": train, "frozen": optax.set_to_zero()}, labels))
    if cfg.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accum_steps, use_grad_mean=False)
    return tx
