"""What a Hugging Face checkpoint directory holds: its weight files, side files, and tensors one by one.

Weights are found in the order transformers looks for them: `model.safetensors.index.json`,
`model.safetensors`, `pytorch_model.bin.index.json`, `pytorch_model.bin`. Safetensors are read
without torch; `.bin` files need torch (imported only here, only for them).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterator

import ml_dtypes
import numpy as np

from converters import safetensors_io
from svlm_jax.errors import CheckpointError

# Tokenizer, processor and generation files that travel with the weights in both directions.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "generation_config.json",
    "preprocessor_config.json", "video_preprocessor_config.json",
)
_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def side_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """The SIDE_FILES present in `directory`."""
    directory = pathlib.Path(directory)
    return [directory / n for n in SIDE_FILES if (directory / n).is_file()]


def hf_dir(src: str | os.PathLike) -> pathlib.Path:
    """Check `src` is a directory with a config.json; return it as a Path."""
    src = pathlib.Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {src} does not exist.")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json; pass a Hugging Face Qwen2.5-VL checkpoint directory.")
    return src


def weight_files(src: str | os.PathLike) -> list[pathlib.Path]:
    """The weight files of HF directory `src`, in shard order; sharded layouts are read from their index."""
    src = pathlib.Path(src)
    for index_name, single_name in _LAYOUTS:
        if (src / index_name).is_file():
            weight_map = json.loads((src / index_name).read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{src / index_name} has no weight_map; the index is corrupt.")
            files = [src / name for name in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"{src / index_name} lists shard {f.name}, which is not in {src}.")
            return files
        if (src / single_name).is_file():
            return [src / single_name]
    raise FileNotFoundError(f"No weights in {src}: expected model.safetensors, model.safetensors.index.json, "
                            f"pytorch_model.bin or pytorch_model.bin.index.json.")


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the bits, then relabel them
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def iter_tensors(path: pathlib.Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, numpy array) for each tensor of one weight file, keeping its dtype (bf16 included)."""
    if path.suffix == ".safetensors":
        yield from safetensors_io.iter_tensors(path)
        return
    try:
        import torch
    except ImportError:
        raise ImportError(f"Reading {path.name} needs torch; install the extra (pip install 'svlm-jax[torch]') "
                          f"or convert the checkpoint to safetensors first.") from None
    # weights_only refuses pickled code; mmap keeps the shard on disk until each tensor is touched.
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
        raise CheckpointError(f"Cannot read {path}: it is truncated or not a PyTorch state dict "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); download it again.") from None
    try:
        while state:
            key = next(iter(state))
            yield key, _torch_to_numpy(state.pop(key))
    finally:
        del state


def tensor_shapes(path: pathlib.Path) -> dict[str, tuple[int, ...]] | None:
    """{key: shape} of one weight file from its header alone, or None when that needs a full read (.bin)."""
    if path.suffix != ".safetensors":
        return None
    return {k: shape for k, (shape, _) in safetensors_io.tensor_shapes(path).items()}
