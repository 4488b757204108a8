"""StreamingVLM's JSONL conversations: parsing and validation.

One line is one JSON conversation (see docs/DATA.md):

    [{"role": "user", "content": [{"type": "video", "video": "game.mp4", "video_start": 0.0,
                                   "video_end": 600.0, "previous": "earlier commentary"},
                                  {"type": "text", "text": "optional query"}]},
     {"role": "assistant", "content": [{"type": "text_stream",
                                        "text_stream": [[0.4, 0.7, "Kick"], [0.7, 1.1, "off"], ...]}]}]

`read_jsonl` never aborts on a bad line: it skips it and counts the reason in a `ValidationReport`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Iterable

# Reasons a record is skipped; the report counts each.
REASONS = {
    "malformed": "not a [user, assistant] conversation in the documented layout",
    "bad_span": "video_end is not after video_start",
    "negative_time": "a time is negative",
    "word_order": "a word ends before it starts",
    "empty_stream": "the text_stream has no words",
    "missing_video": "the video file does not exist",
    "empty_video": "the video file is 0 bytes",
}


class RecordError(ValueError):
    """A record that cannot be used; `reason` is a key of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Record:
    """One annotated video span.

    video: resolved path; start/end: the annotated span in absolute video seconds;
    words: ((start, end, word), ...) sorted by end time; previous: commentary before `start`;
    query: the user text, if any.
    """

    video: str
    start: float
    end: float
    words: tuple[tuple[float, float, str], ...]
    previous: str = ""
    query: str | None = None


@dataclasses.dataclass
class ValidationReport:
    """How many lines were read, kept and skipped (per reason), with a few example line numbers."""

    source: str = ""
    lines: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(line)

    def summary(self) -> str:
        """One line per skip reason, for logs."""
        head = f"{self.source}: {self.lines} lines, {self.kept} records kept, {sum(self.skipped.values())} skipped"
        rows = [f"  {n} x {r} ({REASONS.get(r, r)}; e.g. line {', '.join(map(str, self.examples[r]))})"
                for r, n in sorted(self.skipped.items())]
        return "\n".join([head] + rows)


def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise RecordError("malformed", f"{what} must be a finite number, got {x!r}")
    return float(x)


def parse_record(obj: Any, video_root: str = "", *, check_video: bool = True) -> Record:
    """Turn one decoded JSON conversation into a Record, or raise RecordError naming the reason."""
    if not (isinstance(obj, list) and len(obj) >= 2 and all(isinstance(m, dict) for m in obj)):
        raise RecordError("malformed", "a line must be a JSON list [user message, assistant message]")
    user = next((m for m in obj if m.get("role") == "user"), None)
    asst = next((m for m in obj if m.get("role") == "assistant"), None)
    if user is None or asst is None:
        raise RecordError("malformed", "a line needs one user and one assistant message")
    ucontent = user.get("content")
    acontent = asst.get("content")
    if not isinstance(ucontent, list) or not isinstance(acontent, list):
        raise RecordError("malformed", "message content must be a list of elements")
    video_el = next((c for c in ucontent if isinstance(c, dict) and "video" in c), None)
    if video_el is None:
        raise RecordError("malformed", "the user message has no video element")
    stream_el = next((c for c in acontent if isinstance(c, dict) and "text_stream" in c), None)
    if stream_el is None or not isinstance(stream_el["text_stream"], list):
        raise RecordError("malformed", "the assistant message has no text_stream list")
    video = video_el["video"]
    if not isinstance(video, str) or not video:
        raise RecordError("malformed", "video must be a non-empty path string")
    start = _num(video_el.get("video_start", 0.0), "video_start")
    end = _num(video_el.get("video_end"), "video_end") if "video_end" in video_el else None
    if end is None:
        raise RecordError("malformed", "the video element needs video_end")
    if start < 0 or end < 0:
        raise RecordError("negative_time", f"video span [{start}, {end}] has a negative time")
    if end <= start:
        raise RecordError("bad_span", f"video_end {end} is not after video_start {start}")
    words = []
    for i, w in enumerate(stream_el["text_stream"]):
        if not (isinstance(w, (list, tuple)) and len(w) >= 3 and isinstance(w[2], str)):
            raise RecordError("malformed", f"text_stream item {i} must be [start, end, word]")
        ws, we = _num(w[0], f"word {i} start"), _num(w[1], f"word {i} end")
        if ws < 0 or we < 0:
            raise RecordError("negative_time", f"word {i} {w[2]!r} has a negative time [{ws}, {we}]")
        if we < ws:
            raise RecordError("word_order", f"word {i} {w[2]!r} ends at {we} before it starts at {ws}")
        text = w[2].strip()
        if text:
            words.append((ws, we, text))
    if not words:
        raise RecordError("empty_stream", "the text_stream has no words")
    previous = video_el.get("previous", "") or ""
    if not isinstance(previous, str):
        raise RecordError("malformed", "previous must be a string")
    query = next((c.get("text") for c in ucontent if isinstance(c, dict) and isinstance(c.get("text"), str)), None)
    path = video if os.path.isabs(video) else os.path.join(video_root, video)
    if check_video:
        if not os.path.isfile(path):
            raise RecordError("missing_video", f"video {path!r} does not exist")
        if os.path.getsize(path) == 0:
            raise RecordError("empty_video", f"video {path!r} is 0 bytes")
    words.sort(key=lambda w: (w[1], w[0]))
    return Record(video=path, start=start, end=end, words=tuple(words), previous=previous.strip(),
                  query=query or None)


def iter_jsonl(path: str | os.PathLike, video_root: str | None = None, *, check_video: bool = True,
               report: ValidationReport | None = None) -> Iterable[Record]:
    """Yield the good records of a JSONL file, counting the bad ones in `report`.

    video_root: directory that relative video paths are joined to (default: the JSONL's directory).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path!r} does not exist; pass a JSONL file with --data.")
    root = os.path.dirname(os.path.abspath(path)) if video_root is None else os.fspath(video_root)
    report = report if report is not None else ValidationReport()
    report.source = report.source or path
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.lines += 1
            try:
                rec = parse_record(json.loads(line), root, check_video=check_video)
            except json.JSONDecodeError:
                report.add("malformed", n)
                continue
            except RecordError as e:
                report.add(e.reason, n)
                continue
            report.kept += 1
            yield rec


def read_jsonl(path: str | os.PathLike, video_root: str | None = None, *,
               check_video: bool = True) -> tuple[list[Record], ValidationReport]:
    """All good records of a JSONL file and the report of what was skipped."""
    report = ValidationReport()
    records = list(iter_jsonl(path, video_root, check_video=check_video, report=report))
    return records, report


def record_to_json(video: str, start: float, end: float, words: Iterable[tuple[float, float, str]], *,
                   previous: str = "", query: str | None = None) -> list[dict]:
    """The JSON conversation for one annotated span (the inverse of `parse_record`)."""
    vid: dict[str, Any] = {"type": "video", "video": video, "video_start": start, "video_end": end}
    if previous:
        vid["previous"] = previous
    content: list[dict[str, Any]] = [vid]
    if query:
        content.append({"type": "text", "text": query})
    stream = [[round(float(s), 3), round(float(e), 3), w] for s, e, w in words]
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]}]
