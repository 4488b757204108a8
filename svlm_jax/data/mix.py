"""Training data as the original reads it: whole lines of one or more JSONL files, with repeat counts.

A data mix is a list of `DataSpec`s, `path[:repeat]` on the command line; the original's stage 1 lists
`train_s12w24_with_seeks.jsonl` twice plus `train_livecc_with_seeks.jsonl`, i.e.
`--data train_s12w24_with_seeks.jsonl:2 --data train_livecc_with_seeks.jsonl`. Every line is one sample.

When a file has its sibling `{stem}_seeks.jsonl` (a JSON list of byte offsets; stem = the name without
`_with_seeks` and `.jsonl`), its lines are located from it without reading the file, and each line is
parsed only when its sample is built. Otherwise the file is read and validated up front.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from svlm_jax.data.format import Record, RecordError, ValidationReport, parse_record, read_jsonl
from svlm_jax.errors import DataError, DataNotFound


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One JSONL file of a mix and how many times its lines are listed."""

    path: str
    repeat: int = 1

    @classmethod
    def parse(cls, arg: str) -> "DataSpec":
        """'file.jsonl' or 'file.jsonl:N' (N >= 1 copies of every line)."""
        path, sep, n = arg.rpartition(":")
        if sep and n.isdigit() and path:
            if int(n) < 1:
                raise DataError(f"Repeat count in {arg!r} must be >= 1.")
            return cls(path, int(n))
        return cls(arg, 1)


@dataclasses.dataclass(frozen=True)
class LineRef:
    """A JSONL line located by byte offset, parsed when its sample is built."""

    path: str
    offset: int
    video_root: str

    def load(self) -> Record:
        """Read and parse the line; raises RecordError when it is not a usable record."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            raw = f.readline()
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
            raise RecordError("malformed", f"{self.path} at byte {self.offset} is not a JSON line ({e})") from e
        return parse_record(obj, self.video_root)


def seeks_path(jsonl: str) -> str:
    """The original's seek-index path for a JSONL file: `{dir}/{stem}_seeks.jsonl`."""
    root, name = os.path.split(os.fspath(jsonl))
    stem = name.replace("_with_seeks", "").rsplit(".jsonl", 1)[0]
    return os.path.join(root, f"{stem}_seeks.jsonl")


def read_seeks(jsonl: str) -> list[int] | None:
    """The byte offsets of `jsonl`'s lines from its seek index, or None when there is none."""
    path = seeks_path(jsonl)
    if not os.path.isfile(path) or os.path.abspath(path) == os.path.abspath(jsonl):
        return None
    try:
        with open(path) as f:
            seeks = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not JSON ({e}); rebuild it or delete it to scan {jsonl}.") from None
    if not (isinstance(seeks, list) and all(isinstance(x, int) and x >= 0 for x in seeks)):
        raise DataError(f"{path} must be a JSON list of byte offsets; rebuild it or delete it to scan {jsonl}.")
    return seeks


def load_mix(specs: Sequence[DataSpec], video_root: str | None = None, *, check_video: bool = True,
             log=print) -> list[Record | LineRef]:
    """Every line of every spec, repeated, in order: Records (scanned files) or LineRefs (seek-indexed)."""
    items: list[Record | LineRef] = []
    for spec in specs:
        if not os.path.isfile(spec.path):
            raise DataNotFound(f"Annotation file {spec.path!r} does not exist; pass a JSONL file with --data.")
        root = os.path.dirname(os.path.abspath(spec.path)) if video_root is None else os.fspath(video_root)
        seeks = read_seeks(spec.path)
        if seeks is not None:
            refs = [LineRef(spec.path, o, root) for o in seeks]
            log(f"{spec.path}: {len(refs)} lines from {seeks_path(spec.path)} (parsed when used)"
                + (f", listed {spec.repeat} times" if spec.repeat > 1 else ""))
            items += refs * spec.repeat
        else:
            records, report = read_jsonl(spec.path, root, check_video=check_video)
            log(report.summary() + (f"\n  listed {spec.repeat} times" if spec.repeat > 1 else ""))
            items += records * spec.repeat
    return items


__all__ = ["DataSpec", "LineRef", "ValidationReport", "load_mix", "read_seeks", "seeks_path"]
