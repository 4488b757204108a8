"""An append-only JSONL cache of judge answers, so a rerun never asks a question twice and a killed run resumes.

One line per answered question: the key (a hash of judge, window, order and the three texts' hashes), those
fields in the clear, the raw reply and the parsed vote. Lines are appended and flushed one at a time under a
lock (several judge threads share one cache); a torn last line from a killed run is ignored on reading.
Failed questions are never written, so they are asked again next time.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

from svlm_jax.eval.datasets import Problems, iter_jsonl


def text_hash(text: str) -> str:
    """First 16 hex digits of the SHA-256 of `text` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def question_key(judge: str, window: str, order: str, ref: str, a: str, b: str) -> str:
    """The cache key of one question: judge id, window id, order ("AB"/"BA") and the hashes of the texts
    as they are sent (reference, first and second candidate)."""
    raw = json.dumps([judge, window, order, text_hash(ref), text_hash(a), text_hash(b)])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class JudgmentCache:
    """The cache file at `path` (created on first write). `get(key)` -> record or None; `put(record)` appends.

    Records are dicts with at least "key", "reply" and "vote". The same file can hold several judges and
    benchmarks: the key includes the judge id and the window id.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.records: dict[str, dict] = {}
        self.problems = Problems()
        if os.path.exists(self.path):
            for _, r in iter_jsonl(self.path, self.problems):
                if "key" in r and "vote" in r:
                    self.records[r["key"]] = r
            self._repair_tail()
        self._lock = threading.Lock()
        self.asked = 0  # questions answered and written in this session

    def _repair_tail(self) -> None:
        """End the file with a newline, so the next record does not join a torn last line."""
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, record: dict) -> None:
        """Append one answered question (thread-safe) and flush it to disk."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
            self.records[record["key"]] = record
            self.asked += 1
