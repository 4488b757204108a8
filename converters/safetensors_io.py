"""Torch-free safetensors reading and writing, one tensor at a time, bfloat16 included.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
{dtype, shape, data_offsets} (offsets relative to the end of the header), then the raw bytes.
`safetensors`' own numpy backend cannot represent bfloat16, so we parse the header ourselves and
view the bytes as `ml_dtypes.bfloat16`.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the reference implementation's limit; anything bigger is not a header


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """Parse a .safetensors header -> ({name: {dtype, shape, data_offsets}}, byte offset of the data)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file: it is shorter than its 8-byte header length.")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise ValueError(f"{path} is not a safetensors file: its header claims {n} bytes.")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e}).") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, numpy dtype)} of every tensor in a .safetensors file, read from its header only."""
    header, _ = read_header(path)
    return {k: (tuple(v["shape"]), _dtype(path, k, v["dtype"])) for k, v in header.items()}


def _dtype(path, key: str, name: str) -> np.dtype:
    if name not in DTYPES:
        raise ValueError(f"Tensor {key!r} in {path} has dtype {name}, which the converter does not read; "
                         f"supported: {sorted(DTYPES)}.")
    return DTYPES[name]


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for each tensor in file order, reading only that tensor's bytes.

    Each array is a fresh in-memory copy (not a memory map), so dropping it frees its memory.
    """
    header, start = read_header(path)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    with open(path, "rb") as f:
        for key, info in items:
            dtype = _dtype(path, key, info["dtype"])
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if end - begin != count * dtype.itemsize:
                raise ValueError(f"Tensor {key!r} in {path} spans {end - begin} bytes but shape {shape} "
                                 f"of {info['dtype']} needs {count * dtype.itemsize}; the file is corrupt.")
            f.seek(start + begin)
            arr = np.fromfile(f, dtype=dtype, count=count)
            if arr.size != count:
                raise ValueError(f"{path} ends inside tensor {key!r}; the file is truncated.")
            yield key, arr.reshape(shape)


class Writer:
    """Streams tensors into one .safetensors file: the header goes first, built from the specs.

    `specs` is {name: (shape, numpy dtype)} in file order; `write` must then be called once per name,
    in that order, so only one tensor needs to be in memory at a time.
    """

    def __init__(self, path: str | os.PathLike, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 metadata: Mapping[str, str] | None = None):
        header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for key, (shape, dtype) in specs.items():
            dtype = np.dtype(dtype)
            if dtype not in _NAMES:
                raise ValueError(f"Cannot write tensor {key!r} of dtype {dtype} to safetensors.")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keeps every tensor 8-byte aligned
        self.path, self.pending = path, [(k, tuple(s), np.dtype(d)) for k, (s, d) in specs.items()]
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(blob)))
        self.file.write(blob)

    def write(self, key: str, arr: np.ndarray) -> None:
        """Append the next tensor; its name, shape and dtype must be the next spec."""
        want_key, shape, dtype = self.pending.pop(0) if self.pending else (None, None, None)
        if key != want_key or tuple(arr.shape) != shape or arr.dtype != dtype:
            raise ValueError(f"{self.path}: got tensor {key!r} {tuple(arr.shape)} {arr.dtype}, the header expects "
                             f"{want_key!r} {shape} {dtype} next.")
        np.ascontiguousarray(arr).tofile(self.file)

    def close(self) -> None:
        """Close the file; raise if some announced tensor was never written."""
        self.file.close()
        if self.pending:
            raise ValueError(f"{self.path} was closed before tensor {self.pending[0][0]!r} was written.")

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.file.close()


def write_file(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, str] | None = None) -> None:
    """Write {name: array} as one .safetensors file, tensors in the given order."""
    with Writer(path, {k: (a.shape, a.dtype) for k, a in tensors.items()}, metadata) as w:
        for key, arr in tensors.items():
            w.write(key, arr)
