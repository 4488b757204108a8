"""svlm-jax checkpoints: a directory holding the params (Orbax), `svlm_config.json` and side files.

Layout of a checkpoint directory:

    svlm_config.json   ModelConfig.to_json()
    params/            Orbax (v1) PyTree checkpoint of the nested params dict
    tokenizer.json ... any tokenizer / generation files copied alongside

Writes are atomic: everything goes to a hidden temp directory next to the target, which is renamed
into place at the end, so a failed save leaves the target as it was. Params can be written in
several pieces (`writer`), so a converter never needs the whole model in memory.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from flax import traverse_util
from orbax.checkpoint import v1 as ocp

from svlm_jax.config import _DTYPES, ModelConfig

CONFIG_FILE = "svlm_config.json"
PARAMS_DIR = "params"

Params = dict[str, Any]


def _flatten(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def dtype_name(dtype) -> str:
    """A dtype given as a name, numpy or jax dtype -> one of 'float32', 'bfloat16', 'float16'."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"Unsupported parameter dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return name


def _expected(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    from svlm_jax.model import param_shapes

    return {k: tuple(v.shape) for k, v in _flatten(param_shapes(cfg)).items()}


def _check_target(path: pathlib.Path, overwrite: bool) -> None:
    if not path.exists() or overwrite:
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; remove it or pass overwrite=True.")
    if any(path.iterdir()):
        raise FileExistsError(f"{path} is a non-empty directory; choose another path or pass overwrite=True.")


def _swap_into_place(tmp: pathlib.Path, path: pathlib.Path, overwrite: bool) -> None:
    _check_target(path, overwrite)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a fresh temp directory next to `path`; on clean exit it replaces `path`, on error it vanishes.

    Refuses (FileExistsError) when `path` is a non-empty directory or a file, unless `overwrite`.
    """
    path = pathlib.Path(path).absolute()
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _swap_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ParamsWriter:
    """Collects a params tree piece by piece into an Orbax checkpoint, checking it against a config.

    Each `add` writes its arrays to disk at once (an Orbax partial save), so the caller may free
    them afterwards; `close` checks nothing is missing and seals the checkpoint.
    """

    def __init__(self, directory: pathlib.Path, cfg: ModelConfig):
        self.directory = directory
        self.want = _expected(cfg)
        self.done: set[str] = set()
        # Weights barely compress (zstd saves ~8% on fp32) while compressing doubles the transient
        # memory of each write, so store them raw.
        self.context = ocp.Context()
        self.context.array.saving.use_compression = False

    def add(self, flat: Mapping[str, Any]) -> None:
        """Write {'a/b/c': array} (numpy or jax) now; each path must belong to the config, once."""
        for name, arr in flat.items():
            if name not in self.want:
                raise KeyError(f"Parameter {name!r} is not part of this config's params tree.")
            if name in self.done:
                raise KeyError(f"Parameter {name!r} was written twice.")
            if tuple(arr.shape) != self.want[name]:
                raise ValueError(f"Parameter {name!r} has shape {tuple(arr.shape)}, config expects "
                                 f"{self.want[name]}.")
            self.done.add(name)
        if flat:
            with self.context:
                ocp.partial.save(self.directory, _unflatten(flat))

    def close(self) -> None:
        """Raise if a parameter was never written, then finalize the Orbax checkpoint."""
        missing = sorted(set(self.want) - self.done)
        if missing:
            raise KeyError(f"{len(missing)} parameter(s) were never written, first {missing[0]!r}.")
        with self.context:
            ocp.partial.finalize(self.directory)


@contextlib.contextmanager
def writer(path: str | os.PathLike, cfg: ModelConfig, *, files: Iterable[str | os.PathLike] = (),
           overwrite: bool = False) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Write a checkpoint in pieces: yields `add({'a/b/c': array})`; everything lands atomically on exit.

    `files` (tokenizer, generation config...) are copied into the directory by base name.
    """
    files = [pathlib.Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"Cannot copy {f} into the checkpoint: no such file.")
    with atomic_dir(path, overwrite=overwrite) as tmp:
        params = ParamsWriter(tmp / PARAMS_DIR, cfg)
        yield params.add
        params.close()
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        for f in files:
            shutil.copy2(f, tmp / f.name)


def save(path: str | os.PathLike, cfg: ModelConfig, params: Params, *,
         files: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> pathlib.Path:
    """Save `params` (nested dict of arrays matching `cfg`) and `cfg` to the directory `path`.

    Atomic; refuses to replace a non-empty directory unless `overwrite`. `files` are copied in.
    Returns the absolute checkpoint path.
    """
    with writer(path, cfg, files=files, overwrite=overwrite) as add:
        add(_flatten(params))
    return pathlib.Path(path).absolute()


def _require(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        what = "does not exist" if not path.exists() else f"has no {CONFIG_FILE} and {PARAMS_DIR}/"
        raise FileNotFoundError(f"No svlm-jax checkpoint at {path}: it {what}; pass a directory written by "
                                f"svlm_jax.save or converters.hf_to_jax.")
    return path


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in checkpoint directory `path`."""
    return ModelConfig.from_json(json.loads((_require(path) / CONFIG_FILE).read_text()))


def params_metadata(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{'a/b/c': (shape, stored dtype)} for every parameter of checkpoint `path`, without reading data."""
    meta = ocp.metadata(_require(path) / PARAMS_DIR).metadata
    return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _flatten(meta).items()}


def _check_stored(path: pathlib.Path, cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    stored, want = params_metadata(path), _expected(cfg)
    for name in sorted(set(stored) | set(want)):
        if name not in stored or name not in want or stored[name][0] != want[name]:
            got = stored[name][0] if name in stored else "absent"
            raise ValueError(f"Checkpoint {path} does not match its {CONFIG_FILE}: parameter {name!r} is {got}, "
                             f"config expects {want.get(name, 'absent')}.")
    return stored


def load(path: str | os.PathLike, dtype=None, quant: str | None = None) -> tuple[ModelConfig, Params]:
    """Load (cfg, params) from checkpoint `path`; params is a nested dict of jax arrays on the default device.

    With `dtype` (e.g. jnp.bfloat16 or "bfloat16") every parameter is cast to it and the returned
    config computes in it; otherwise parameters keep their stored dtypes. quant="int8" quantizes the
    decoder's linear layers and the LM head to int8 weights with per-channel scales (`svlm_jax.quant`).
    """
    path = _require(path)
    cfg = load_config(path)
    stored = _check_stored(path, cfg)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype_name(dtype))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(shape, _DTYPES[cfg.dtype] if dtype is not None else dt, sharding=device)
                for k, (shape, dt) in stored.items()}
    params = ocp.load(path / PARAMS_DIR, _unflatten(abstract))
    if quant is not None:
        from svlm_jax.quant import quantize_params

        params = quantize_params(cfg, params, quant)
    return cfg, params


def load_arrays(path: str | os.PathLike, names: Iterable[str], dtype=None) -> dict[str, np.ndarray]:
    """Read only the named parameters ('a/b/c') of checkpoint `path` as host numpy arrays.

    This is how converters walk a checkpoint shard by shard without holding the whole model.
    """
    path = _require(path)
    stored = params_metadata(path)
    abstract = {}
    for name in names:
        if name not in stored:
            raise KeyError(f"Checkpoint {path} has no parameter {name!r}.")
        shape, dt = stored[name]
        # np.empty only reserves address space; Orbax reads into fresh arrays of this dtype.
        abstract[name] = np.empty(shape, _DTYPES[dtype_name(dtype)] if dtype is not None else dt)
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True
    with ctx:
        loaded = ocp.load(path / PARAMS_DIR, _unflatten(abstract))
    return {k: np.asarray(v) for k, v in _flatten(loaded).items()}
