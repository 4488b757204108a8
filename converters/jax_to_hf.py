"""Convert an svlm-jax checkpoint back into a Hugging Face Qwen2.5-VL directory.

    python -m converters.jax_to_hf SRC DST [--dtype keep|float32|bfloat16|float16] [--max-shard-size 5GB]

Writes legacy key names (`visual.*`, `model.*`, `lm_head.*`, what the hub uses) into safetensors
shards of at most --max-shard-size (one `model.safetensors` when everything fits, otherwise
`model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`), config.json, and the
tokenizer files found in SRC. Tensors are streamed into each shard a group at a time, so memory does
not grow with the shard size. Atomic like hf_to_jax: a failure leaves DST as it was.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from converters import hf_files, safetensors_io
from converters.hf_to_jax import DTYPE_CHOICES, check_values, error_text, release_freed_memory
from converters.keys import TO_HF, expected_hf_shapes, hf_key_for
from svlm_jax import checkpoint
from svlm_jax.errors import check_output, print_warnings

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: str | int) -> int:
    """'5GB' -> 5_000_000_000, '200KB' -> 200_000, '1GiB' -> 2**30 (decimal units, as transformers reads them)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"Cannot read shard size {size!r}; write it like 5GB, 500MB, 200KB or 1GiB.")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Group names (in order) into shards of at most max_bytes; a bigger tensor gets a shard of its own."""
    shards: list[list[str]] = []
    used = 0
    for name, n in sizes.items():
        if not shards or (used + n > max_bytes and shards[-1]):
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "keep",
            max_shard_size: str | int = "5GB", overwrite: bool = False, progress: bool = True,
            read_bytes: int = 512 * 2**20) -> dict:
    """Write svlm-jax checkpoint `src` as a HF directory at `dst`; returns a summary dict.

    Each shard's header is written first and its tensors streamed in after, read from Orbax in
    groups of at most `read_bytes`, so memory stays near twice that whatever the shard size.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"--dtype must be one of {DTYPE_CHOICES}, got {dtype!r}.")
    start = time.time()
    max_bytes = parse_size(max_shard_size)
    cfg = checkpoint.load_config(src)
    check_output(dst, [src], what="DST", replaces=True)
    stored = checkpoint.params_metadata(src)
    hf_shapes = expected_hf_shapes(cfg)
    plan = {}  # params path -> (HF key, transform, output dtype)
    for path, (shape, stored_dtype) in stored.items():
        key, transform = hf_key_for(path)
        if key not in hf_shapes:
            raise ValueError(f"Checkpoint {src} holds {path!r}, which its config does not have.")
        plan[path] = (key, transform, np.dtype(stored_dtype if dtype == "keep" else jnp.dtype(dtype)))
    missing = sorted(set(hf_shapes) - {key for key, _, _ in plan.values()})
    if missing:
        raise ValueError(f"Checkpoint {src} lacks the weight for {missing[0]!r}; it does not match its config.")
    nbytes = {p: int(np.prod(stored[p][0])) * plan[p][2].itemsize for p in plan}
    shards = plan_shards(nbytes, max_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    out_dtypes = sorted({d.name for _, _, d in plan.values()})
    weight_map = {}
    with checkpoint.atomic_dir(dst, overwrite=overwrite) as tmp, \
            tqdm(total=len(plan), unit="tensor", desc="jax_to_hf", disable=not progress, file=sys.stderr) as bar:
        for shard, name in zip(shards, names):
            bar.set_postfix_str(name)
            specs = {plan[p][0]: (hf_shapes[plan[p][0]], plan[p][2]) for p in shard}
            with safetensors_io.Writer(tmp / name, specs, {"format": "pt"}) as out:
                # Read the shard's tensors in groups of at most read_bytes and stream them into the file.
                for group in plan_shards({p: nbytes[p] for p in shard}, read_bytes):
                    arrays = checkpoint.load_arrays(src, group, None if dtype == "keep" else dtype)
                    for path in group:
                        key, transform, _ = plan[path]
                        check_values(path, arrays[path], str(src))
                        out.write(key, TO_HF[transform](arrays.pop(path), hf_shapes[key]))
                        weight_map[key] = name
                        bar.update()
                    del arrays
                    release_freed_memory()
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        hf_cfg = cfg.to_hf()
        hf_cfg["torch_dtype"] = out_dtypes[0] if len(out_dtypes) == 1 else "float32"
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        for f in hf_files.side_files(src):
            (tmp / f.name).write_bytes(f.read_bytes())
    return {"src": str(src), "dst": str(pathlib.Path(dst).absolute()), "tensors": len(plan),
            "params": int(sum(np.prod(s) for s, _ in stored.values())), "dtype": "+".join(out_dtypes),
            "shards": len(shards), "seconds": time.time() - start}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line error on bad input)."""
    ap = argparse.ArgumentParser(prog="python -m converters.jax_to_hf", description=__doc__.split("\n")[0])
    ap.add_argument("src", help="svlm-jax checkpoint directory (svlm_config.json + params/)")
    ap.add_argument("dst", help="HF directory to create")
    ap.add_argument("--dtype", choices=DTYPE_CHOICES, default="keep", help="tensor dtype (default: keep)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB (default 5GB)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        with print_warnings("jax_to_hf"):
            s = convert(args.src, args.dst, dtype=args.dtype, max_shard_size=args.max_shard_size,
                        overwrite=args.overwrite, progress=not args.no_progress)
    except (KeyError, ValueError, OSError) as e:  # bad input, named by the message
        print(f"jax_to_hf: error: {error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary directory is already removed; DST is as it was
        print(f"jax_to_hf: interrupted; {args.dst} was not written.", file=sys.stderr)
        return 130
    print(f"jax_to_hf: {s['tensors']} tensors in {s['shards']} shard(s), {s['params']:,} params, {s['dtype']}, "
          f"{s['seconds']:.1f}s -> {s['dst']}")
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    exit_cli(main())
