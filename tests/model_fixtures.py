"""Random parameters for the tests' tiny models, compiled once per config and process.

Compiling `init_params` costs seconds per call site (a fresh `jax.jit(lambda ...)` never hits the jit cache),
so every test module draws its parameters from these cached functions; the values are those of the plain
`jax.jit(lambda key: init_params(cfg, key))` they replace.
"""
import functools

import jax

from svlm_jax import init_params


@functools.lru_cache(maxsize=None)
def _init(cfg):
    return jax.jit(lambda key: init_params(cfg, key))


def random_params(cfg, seed: int = 0):
    """`init_params(cfg, key(seed))`, jitted (eager init compiles every op on first use)."""
    return _init(cfg)(jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def _noisy(cfg, scale: float):
    @jax.jit
    def noisy(key):
        leaves, tree = jax.tree_util.tree_flatten(init_params(cfg, key))
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return tree.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    return noisy


def noisy_params(cfg, seed: int = 0, scale: float = 0.2):
    """Random params with noise on every leaf (norms and biases included): greedy output depends on the input."""
    return _noisy(cfg, scale)(jax.random.key(seed))
