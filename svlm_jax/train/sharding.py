"""Device mesh and shardings: data parallelism plus FSDP of parameters and optimizer state.

The mesh has two axes, ("data", "fsdp"). Batches are split over both (every device gets its own
rows). Each parameter (and each optimizer-state array of the same shape) is split along its largest
dimension that the fsdp axis divides; XLA's SPMD partitioner then gathers weights per layer for the
forward/backward and reduce-scatters the gradients, which is FSDP. Small arrays stay replicated.

Multi-host: call `init_distributed(...)` first (it wraps `jax.distributed.initialize`); every process
then loads its own slice of the global batch and `shard_batch` assembles the global arrays.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, auto: bool = False) -> bool:
    """Start JAX's multi-host runtime (`jax.distributed.initialize`) before any other JAX call.

    Pass the coordinator's host:port, the number of processes and this process's id, or `auto=True`
    to let JAX detect a cluster (SLURM, Open MPI, TPU pods, ...). Returns whether it initialised.
    """
    if not auto and coordinator is None:
        if num_processes not in (None, 1):
            raise ValueError("A multi-process run needs --coordinator HOST:PORT (or --distributed-auto).")
        return False
    if auto and coordinator is None:
        jax.distributed.initialize()
    else:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id too.")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over all (or the given) devices; -1 takes the devices left over."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if fsdp < 1 or n % fsdp:
            raise ValueError(f"--fsdp {fsdp} must divide the {n} devices.")
        data = n // fsdp
    if fsdp == -1:
        if data < 1 or n % data:
            raise ValueError(f"--data-parallel {data} must divide the {n} devices.")
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"Mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, but {n} are available.")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def array_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 1 << 14) -> P:
    """PartitionSpec of a parameter-like array: its largest fsdp-divisible axis on 'fsdp', else replicated."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % fsdp == 0:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a (possibly abstract) state tree: FSDP by shape, scalars replicated."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, array_spec(tuple(x.shape), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of every batch array split over all devices."""
    return NamedSharding(mesh, P(BATCH_AXES))


def activation_constraint(mesh: Mesh):
    """A function that pins [B, T, D] activations to the batch sharding."""
    spec = NamedSharding(mesh, P(BATCH_AXES, None, None))
    return lambda x: jax.lax.with_sharding_constraint(x, spec)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host arrays -> global jax Arrays split by rows. Each process passes its own rows (its slice)."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Fail early when the batch cannot be split evenly over the mesh and the processes."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"The batch of {global_batch} rows does not split over {n} devices; "
                         f"use a --batch-size that is a multiple of {n}.")
    if global_batch % jax.process_count():
        raise ValueError(f"The batch of {global_batch} rows does not split over {jax.process_count()} processes.")
