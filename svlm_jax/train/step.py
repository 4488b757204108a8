"""The train state and the jitted train / eval steps.

One call of the train step consumes one microbatch. The optimizer (see `optim.py`) accumulates the
microbatches' summed gradients and applies an update on the last microbatch of each step, dividing
by the labelled tokens of all of them. The state is donated. A step whose loss or gradient is not
finite returns the state it was given, untouched, and reports `finite = False`, so the caller can
stop without a corrupted state.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svlm_jax.config import ModelConfig
from svlm_jax.train import loss as loss_lib
from svlm_jax.train import sharding as shd
from svlm_jax.train.optim import OptimConfig, lr_schedule, make_optimizer, param_labels, subtree_frozen

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps done; micro: microbatches gathered toward the next step;
    tokens: their labelled tokens; params; opt_state."""

    step: jax.Array
    micro: jax.Array
    tokens: jax.Array
    params: Params
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """remat: recompute each decoder layer in the backward pass; ce_chunk: positions per logits chunk;
    attn_chunk: query rows per attention block (None: the whole sequence at once)."""

    remat: bool = True
    ce_chunk: int = 1024
    attn_chunk: int | None = 1024


def init_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0."""
    return TrainState(step=jnp.zeros((), jnp.int32), micro=jnp.zeros((), jnp.int32),
                      tokens=jnp.zeros((), jnp.float32), params=params, opt_state=tx.init(params))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


class Trainer:
    """Compiled train and eval steps for one model, optimizer and mesh.

    `state_sharding` places a state on the mesh; `train_step(state, batch)` and `eval_step(params, batch)`
    take device batches from `sharding.shard_batch`.
    """

    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Mesh, params_like: Params,
                 step_cfg: StepConfig = StepConfig()):
        self.model_cfg, self.optim_cfg, self.mesh, self.step_cfg = model_cfg, optim_cfg, mesh, step_cfg
        self.tx = make_optimizer(optim_cfg, params_like)
        self.schedule = lr_schedule(optim_cfg)
        self.labels = param_labels(params_like, optim_cfg.frozen)
        self.stop_vision_grad = subtree_frozen(params_like, optim_cfg.frozen, "visual")
        abstract = jax.eval_shape(lambda p: init_state(p, self.tx), params_like)
        self.state_sharding = shd.state_shardings(abstract, mesh)
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_sharding)
        replicated = NamedSharding(mesh, P())
        batch_sh = shd.batch_sharding(mesh)
        self.train_step: Callable = jax.jit(self._train_step, in_shardings=(self.state_sharding, batch_sh),
                                            out_shardings=(self.state_sharding, replicated), donate_argnums=0)
        self.eval_step: Callable = jax.jit(self._eval_step, in_shardings=(self.state_sharding.params, batch_sh),
                                           out_shardings=replicated)
        f32 = lambda p: jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), p)  # noqa: E731
        self._init = jax.jit(lambda p: init_state(f32(p), self.tx), in_shardings=(self.state_sharding.params,),
                             out_shardings=self.state_sharding)

    # ------------------------------------------------------------------ state
    def init(self, params: Params) -> TrainState:
        """A fresh state for `params` (host or device arrays, any float dtype), sharded over the mesh in float32.

        The params are moved to their shards first, so arrays loaded onto one device (a checkpoint) work on
        any mesh, and the optimizer state is created already sharded.
        """
        return self._init(jax.device_put(params, self.state_sharding.params))

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return float(self.schedule(step))

    # ------------------------------------------------------------------ steps
    def _loss(self, params, batch):
        return loss_lib.loss_sum(self.model_cfg, params, batch, remat=self.step_cfg.remat,
                                 stop_vision_grad=self.stop_vision_grad, ce_chunk=self.step_cfg.ce_chunk,
                                 attn_chunk=self.step_cfg.attn_chunk, constrain=shd.activation_constraint(self.mesh))

    def _train_step(self, state: TrainState, batch):
        (ce_sum, n), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, batch)
        total = state.tokens + n
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params, num_tokens=total)
        params = optax.apply_updates(state.params, updates)
        emit = state.micro + 1 >= self.optim_cfg.accum_steps
        new = TrainState(step=state.step + emit.astype(jnp.int32),
                         micro=jnp.where(emit, 0, state.micro + 1).astype(jnp.int32),
                         tokens=jnp.where(emit, 0.0, total), params=params, opt_state=opt_state)
        finite = jnp.isfinite(ce_sum) & _all_finite(grads)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state)
        # Norm of the token-mean gradient accumulated so far (trainable params, before clipping); on the
        # last microbatch of a step it is the step's gradient norm.
        acc = grads
        if isinstance(state.opt_state, optax.MultiStepsState):
            acc = jax.tree_util.tree_map(lambda a, g: a + g, state.opt_state.acc_grads, grads)
        trainable = [g for g, lab in zip(jax.tree_util.tree_leaves(acc), jax.tree_util.tree_leaves(self.labels))
                     if lab == "train"]
        metrics = {"loss_sum": ce_sum, "tokens": n, "finite": finite,
                   "grad_norm": optax.global_norm(trainable) / jnp.maximum(total, 1.0)}
        return new, metrics

    def _eval_step(self, params, batch):
        ce_sum, n = loss_lib.loss_sum(self.model_cfg, params, batch, remat=False, stop_vision_grad=True,
                                      ce_chunk=self.step_cfg.ce_chunk, attn_chunk=self.step_cfg.attn_chunk,
                                      constrain=shd.activation_constraint(self.mesh))
        return {"loss_sum": ce_sum, "tokens": n}
