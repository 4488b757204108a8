"""svlm-jax checkpoints: a directory holding the params (Orbax), `svlm_config.json` and side files.

Layout of a checkpoint directory:

    svlm_config.json   ModelConfig.to_json()
    params/            Orbax (v1) PyTree checkpoint of the nested params dict
    preprocessing.json the video preprocessing the model was trained with (fps, pixel budget), optional
    tokenizer.json ... any tokenizer / generation files copied alongside

Writes are atomic: everything goes to a hidden temp directory next to the target, which is renamed
into place at the end, so a failed save leaves the target as it was. Params can be written in
several pieces (`writer`), so a converter never needs the whole model in memory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import uuid
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from flax import traverse_util
from orbax.checkpoint import v1 as ocp

from svlm_jax.config import _DTYPES, ModelConfig
from svlm_jax.errors import CheckpointError, CheckpointNotFound

CONFIG_FILE = "svlm_config.json"
PARAMS_DIR = "params"
PREPROCESSING_FILE = "preprocessing.json"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How video was fed to a model in training: frames per second, the per-frame pixel budget, which frames
    of each second were picked (`video.FrameStream`'s `sampling`) and how they were resized (`resize`).

    Streaming with other values shows the model frames of another size, pace or phase than it learned from,
    so everything that makes frames for a checkpoint starts from its preprocessing.json:
    `video.FrameStream.for_model`, `stream.Streamer.from_checkpoint` (`st.frames`), the stream CLI, the
    server, the evaluations and the demo. The defaults are StreamingVLM's (2 fps, 100 to 768 merged tokens
    per frame, its frame picking and torchvision's antialiased bicubic resize).
    """

    fps: int = 2
    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    frames: str = "original"
    resize: str = "torchvision"

    def replace(self, **overrides) -> "Preprocessing":
        """A copy with the given fields changed; None values leave a field as it is (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def frame_stream_kwargs(self) -> dict[str, Any]:
        """These settings as `video.FrameStream` arguments (its `sampling` is this `frames`)."""
        return dict(fps=self.fps, min_pixels=self.min_pixels, max_pixels=self.max_pixels, sampling=self.frames,
                    resize=self.resize)


def save_preprocessing(directory: str | os.PathLike, pre: Preprocessing) -> None:
    """Write `pre` as preprocessing.json into a checkpoint directory."""
    (pathlib.Path(directory) / PREPROCESSING_FILE).write_text(json.dumps(dataclasses.asdict(pre), indent=2) + "\n")


def load_preprocessing(path: str | os.PathLike) -> Preprocessing:
    """The preprocessing checkpoint `path` was trained with, or the defaults when it records none."""
    f = _require(path) / PREPROCESSING_FILE
    if not f.is_file():
        return Preprocessing()
    try:
        raw = json.loads(f.read_text())
        pre = Preprocessing(**{k: int(raw[k]) for k in ("fps", "min_pixels", "max_pixels") if k in raw},
                            **{k: str(raw[k]) for k in ("frames", "resize") if k in raw})
        from svlm_jax.video import RESIZERS, SAMPLINGS

        if pre.frames not in SAMPLINGS or pre.resize not in RESIZERS:
            raise ValueError(f"frames must be one of {SAMPLINGS} and resize one of {tuple(RESIZERS)}")
        return pre
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is damaged ({e}); fix it or delete it to use the defaults.") from None


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silence Orbax's per-thread error logs while a read is tried: Orbax logs each failing read from its
    worker threads before raising, and the error that follows says the same in one line."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _orbax_errors(what: str, directory: pathlib.Path) -> Iterator[None]:
    """Turn Orbax / TensorStore failures on reading `directory` into one CheckpointError (logs quieted)."""
    try:
        with quiet_orbax():
            yield
    except (KeyboardInterrupt, MemoryError, CheckpointError):
        raise
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged directory
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"Cannot read the {what} in {directory}: it is damaged or incomplete "
                              f"({type(e).__name__}: {detail}); re-save or re-convert the checkpoint.") from e

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


def is_float(dtype) -> bool:
    """Whether `dtype` is a floating-point type, bfloat16 and float16 included.

    numpy's own test (`np.issubdtype(dt, np.floating)`) is False for bfloat16, which ml_dtypes defines
    outside numpy's type tree; jax's knows it.
    """
    return bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))


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
           overwrite: bool = False,
           preprocessing: Preprocessing | None = None) -> Iterator[Callable[[Mapping[str, Any]], None]]:
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
        if preprocessing is not None:
            save_preprocessing(tmp, preprocessing)


def save(path: str | os.PathLike, cfg: ModelConfig, params: Params, *,
         files: Iterable[str | os.PathLike] = (), overwrite: bool = False,
         preprocessing: Preprocessing | None = None) -> pathlib.Path:
    """Save `params` (nested dict of arrays matching `cfg`) and `cfg` to the directory `path`.

    Atomic; refuses to replace a non-empty directory unless `overwrite`. `files` are copied in;
    `preprocessing` (the video preprocessing used in training) is recorded for the stream CLI.
    Returns the absolute checkpoint path.
    """
    with writer(path, cfg, files=files, overwrite=overwrite, preprocessing=preprocessing) as add:
        add(_flatten(params))
    return pathlib.Path(path).absolute()


def _require(path: str | os.PathLike) -> pathlib.Path:
    """The absolute path of checkpoint directory `path` (Orbax needs absolute paths), or CheckpointNotFound."""
    given = os.fspath(path)
    path = pathlib.Path(path).absolute()
    if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        what = ("does not exist" if not path.exists() else "is a file, not a directory" if not path.is_dir()
                else f"has no {CONFIG_FILE}" if not (path / CONFIG_FILE).is_file() else f"has no {PARAMS_DIR}/")
        raise CheckpointNotFound(f"No svlm-jax checkpoint at {given}: it {what}; pass a directory written by "
                                 f"svlm_jax.save or converters.hf_to_jax.")
    return path


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in checkpoint directory `path`."""
    f = _require(path) / CONFIG_FILE
    try:
        return ModelConfig.from_json(json.loads(f.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is damaged or not an svlm-jax config ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]}); restore it from the source of the checkpoint.") from None


def params_metadata(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{'a/b/c': (shape, stored dtype)} for every parameter of checkpoint `path`, without reading data."""
    directory = _require(path) / PARAMS_DIR
    with _orbax_errors("parameter index", directory):
        meta = ocp.metadata(directory).metadata
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"Cannot read the parameter index in {directory}: its Orbax metadata is missing "
                                  f"or damaged; re-save or re-convert the checkpoint.")
        return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _flatten(meta).items()}


def _check_stored(path: pathlib.Path, cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    stored, want = params_metadata(path), _expected(cfg)
    for name in sorted(set(stored) | set(want)):
        if name not in stored or name not in want or stored[name][0] != want[name]:
            got = stored[name][0] if name in stored else "absent"
            raise CheckpointError(f"Checkpoint {path} does not match its {CONFIG_FILE}: parameter {name!r} is "
                                  f"{got}, config expects {want.get(name, 'absent')}.")
    odd = sorted(k for k, (_, dt) in stored.items() if not is_float(dt))
    if odd:
        warnings.warn(f"Checkpoint {path} stores {len(odd)} parameter(s) as non-float, first {odd[0]!r} as "
                      f"{stored[odd[0]][1]}; they are cast to the compute dtype, check how it was written.",
                      stacklevel=3)
    return stored


def warn_non_finite(params: Params, where: str) -> list[str]:
    """Warn naming the parameters of `params` that hold NaN or inf (a damaged or diverged model); returns them."""
    import jax.numpy as jnp

    bad = [k for k, v in _flatten(params).items() if not bool(jnp.isfinite(v).all())]
    if bad:
        warnings.warn(f"{where}: {len(bad)} parameter(s) hold NaN or inf, first {bad[0]!r}; the model's outputs "
                      f"will be garbage.", stacklevel=3)
    return bad


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
    # Non-float parameters (a damaged export) would break the model's matmuls; compute in the config's dtype.
    abstract = {k: jax.ShapeDtypeStruct(shape, _DTYPES[cfg.dtype] if dtype is not None
                                        or not is_float(dt) else dt, sharding=device)
                for k, (shape, dt) in stored.items()}
    with _orbax_errors("parameters", path / PARAMS_DIR):
        params = ocp.load(path / PARAMS_DIR, _unflatten(abstract))
    warn_non_finite(params, f"Checkpoint {path}")
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
            raise CheckpointError(f"Checkpoint {path} has no parameter {name!r}.")
        shape, dt = stored[name]
        # np.empty only reserves address space; Orbax reads into fresh arrays of this dtype.
        abstract[name] = np.empty(shape, _DTYPES[dtype_name(dtype)] if dtype is not None else dt)
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True
    with ctx, _orbax_errors("parameters", path / PARAMS_DIR):
        loaded = ocp.load(path / PARAMS_DIR, _unflatten(abstract))
    return {k: np.asarray(v) for k, v in _flatten(loaded).items()}
