"""Convert a Hugging Face Qwen2.5-VL checkpoint directory into an svlm-jax checkpoint.

    python -m converters.hf_to_jax SRC DST [--dtype keep|float32|bfloat16|float16] [--overwrite]

Tensors stream through one at a time: each is read, checked against the key table
(converters/keys.py), transposed into the params layout and buffered; at the end of each shard, or
sooner once `flush_bytes` are buffered, the buffer is written to the Orbax checkpoint and dropped.
Peak memory is therefore about twice the smaller of one shard and `flush_bytes` (the buffer plus
Orbax's copy while writing it), whatever the model size. Everything is written to a temp directory renamed onto DST at the
end, so a failure leaves DST as it was.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import pathlib
import sys
import time
import warnings

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from converters import hf_files
from converters.keys import KeyChecker, normalize_key, to_jax
from svlm_jax import checkpoint
from svlm_jax.config import ModelConfig
from svlm_jax.errors import CheckpointError, check_output, one_line, print_warnings

DTYPE_CHOICES = ("keep", "float32", "bfloat16", "float16")
_EMBED = "model.embed_tokens.weight"
_LM_HEAD = "lm_head.weight"


def _digest(arr: np.ndarray) -> str:
    """A dtype-independent fingerprint of a 2-D weight (its float32 values), computed in row blocks."""
    h = hashlib.blake2b(repr(arr.shape).encode())
    for i in range(0, arr.shape[0], 4096):
        h.update(np.ascontiguousarray(arr[i:i + 4096], np.float32).tobytes())
    return h.hexdigest()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    Orbax reads and writes with many threads, and glibc keeps what they free in per-thread arenas;
    without a trim jax_to_hf grew by most of a shard per shard although it held nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def all_finite(arr: np.ndarray, block: int = 1 << 24) -> bool:
    """Whether a float array (bf16, fp16 and fp32 alike) holds no NaN or inf, tested `block` values at a time
    so the test never needs more than a small mask however large the tensor."""
    flat = arr.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + block]).all()) for i in range(0, flat.size, block))


def check_values(key: str, arr: np.ndarray, where: str) -> None:
    """Warn, naming the tensor, when a weight is not floating point (bf16 and fp16 are) or holds NaN or inf."""
    if not checkpoint.is_float(arr.dtype):
        warnings.warn(f"Tensor {key!r} in {where} is stored as {arr.dtype}, not a float; it will be cast. Check "
                      f"how the checkpoint was made.", stacklevel=2)
    elif not all_finite(arr):
        warnings.warn(f"Tensor {key!r} in {where} holds NaN or inf; the converted model's outputs will be garbage.",
                      stacklevel=2)


def match_lm_head(key: str) -> bool:
    """Whether `key` (either naming) is the LM head weight."""
    return normalize_key(key) == _LM_HEAD


def _compute_dtype(src: pathlib.Path, dtype: str) -> str:
    if dtype != "keep":
        return dtype
    declared = json.loads((src / "config.json").read_text()).get("torch_dtype")
    return declared if declared in ("float32", "bfloat16", "float16") else "float32"


def _preflight(files: list[pathlib.Path], cfg: ModelConfig) -> list[str] | None:
    """Check every key and shape from the safetensors headers before any data is read.

    Returns all keys, or None when some file is a .bin whose keys are only known on reading.
    """
    checker, keys = KeyChecker(cfg), []
    for f in files:
        shapes = hf_files.tensor_shapes(f)
        if shapes is None:
            return None
        for key, shape in shapes.items():
            checker.take(key, shape)
            keys.append(key)
    checker.finish()
    return keys


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "keep", overwrite: bool = False,
            flush_bytes: int = 512 * 2**20, progress: bool = True) -> dict:
    """Convert HF directory `src` into an svlm-jax checkpoint at `dst`; returns a summary dict.

    dtype: 'keep' leaves each tensor's dtype as stored (the config computes in config.json's
    torch_dtype); otherwise every tensor is cast and the config computes in that dtype.
    Raises KeyError/ValueError naming the offending key (and shapes) on unmapped, duplicated,
    missing or misshapen tensors; DST is then untouched.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}.")
    start = time.time()
    src = hf_files.hf_dir(src)
    check_output(dst, [src], what="DST", replaces=True)
    cfg = ModelConfig.from_hf(src).replace(dtype=_compute_dtype(src, dtype))
    files = hf_files.weight_files(src)
    keys = _preflight(files, cfg)
    checker = KeyChecker(cfg)
    # A tied checkpoint may still carry lm_head.weight; it is dropped only if it equals the embedding.
    check_tie = cfg.text.tie_word_embeddings and (keys is None or any(match_lm_head(k) for k in keys))
    digests: dict[str, tuple[str, str]] = {}  # legacy key -> (key as written, fingerprint)
    n_tensors = n_params = 0
    dtypes: set[str] = set()
    with checkpoint.writer(dst, cfg, files=hf_files.side_files(src), overwrite=overwrite) as add, \
            tqdm(unit="tensor", desc="hf_to_jax", total=None if keys is None else len(keys),
                 disable=not progress, file=sys.stderr) as bar:
        buffer, buffered = {}, 0
        for f in files:
            bar.set_postfix_str(f.name)
            for key, arr in hf_files.iter_tensors(f):
                path, transform = checker.take(key, arr.shape)
                check_values(key, arr, f.name)
                if check_tie and path in (None, "text/embed_tokens/embedding"):
                    digests[_EMBED if path else _LM_HEAD] = (key, _digest(arr))
                if path is not None:
                    out = to_jax(arr if dtype == "keep" else arr.astype(jnp.dtype(dtype), copy=False), transform)
                    buffer[path] = out
                    buffered += out.nbytes
                    n_params += out.size
                    dtypes.add(out.dtype.name)
                    if buffered >= flush_bytes:
                        add(buffer)
                        buffer, buffered = {}, 0
                        release_freed_memory()
                del arr
                n_tensors += 1
                bar.update()
            # Flushing at each shard's end bounds memory by the smaller of a shard and flush_bytes.
            add(buffer)
            buffer, buffered = {}, 0
            release_freed_memory()
        checker.finish()
        if _LM_HEAD in digests and digests[_LM_HEAD][1] != digests[_EMBED][1]:
            raise ValueError(f"{digests[_LM_HEAD][0]!r} differs from {digests[_EMBED][0]!r} but config.json "
                             f"ties them (tie_word_embeddings=true); fix config.json or drop the tensor.")
    return {"src": str(src), "dst": str(pathlib.Path(dst).absolute()), "tensors": n_tensors, "params": n_params,
            "dtype": "+".join(sorted(dtypes)), "seconds": time.time() - start,
            "dropped_tied_lm_head": _LM_HEAD in digests}


def error_text(e: BaseException) -> str:
    """The message of an exception on one line, without the quotes str() adds to a KeyError."""
    return one_line(e)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line error on bad input)."""
    ap = argparse.ArgumentParser(prog="python -m converters.hf_to_jax", description=__doc__.split("\n")[0])
    ap.add_argument("src", help="HF Qwen2.5-VL directory (config.json + safetensors or pytorch_model*.bin)")
    ap.add_argument("dst", help="svlm-jax checkpoint directory to create")
    ap.add_argument("--dtype", choices=DTYPE_CHOICES, default="keep", help="parameter dtype (default: keep)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    ap.add_argument("--flush-mb", type=int, default=512, help="write to disk every this many MiB (default 512)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        with print_warnings("hf_to_jax"):
            s = convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                        flush_bytes=args.flush_mb * 2**20, progress=not args.no_progress)
    except (KeyError, ValueError, OSError, ImportError) as e:  # bad input: the key table and files name it
        print(f"hf_to_jax: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary directory is already removed; DST is as it was
        print(f"hf_to_jax: interrupted; {args.dst} was not written.", file=sys.stderr)
        return 130
    tied = " (tied lm_head dropped)" if s["dropped_tied_lm_head"] else ""
    print(f"hf_to_jax: {s['tensors']} tensors{tied}, {s['params']:,} params, {s['dtype']}, "
          f"{s['seconds']:.1f}s -> {s['dst']}")
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
