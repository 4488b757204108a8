"""StreamingVLM's JSONL conversations: parsing and validation.

One line is one JSON conversation (see docs/DATA.md):

    [{"role": "user", "content": [{"type": "video", "video": "game.mp4", "video_start": 0.0,
                                   "video_end": 600.0, "previous": "earlier commentary"},
                                  {"type": "text", "text": "optional query"}]},
     {"role": "assistant", "content": [{"type": "text_stream",
                                        "text_stream": [[0.4, 0.7, "Kick"], [0.7, 1.1, "off"], ...],
                                        "qa_stream": [[0, 5.5, "Who scored?", "Curry"], ...]}]}]

Records keep what the original's `lmm_dataset.py` reads: the words in file order, the qa_stream, and
`previous` taken from the last user content element that has one. The original reads a word's end time
only (`get_phrase_before_timestamp` in streaming_vlm/data/lmm_dataset.py: round k takes the next words
while video_start + k + 1 >= their end), never its start. So a start that is negative, after the end, or
not a number at all never rejects a line (one that is not a finite number is kept as None); a start
after its end is counted (`reversed_words`), as a hint about the annotation. Negative end times,
words before video_start, a negative video_start and a line with no words are kept too: the original
trains on all of them (a word ending by video_start + 1 lands in round 0; no words = silent rounds).

The checks that remain, each counted under a reason and printed in `ValidationReport.summary`: the
layout (`malformed`), video_end after video_start (`bad_span`: the original finds no frame in such a
clip and raises), the video file (`missing_video`, `empty_video`: the original raises), and every word
end and qa time a finite number (`malformed`). The original compares those only until a round stops
consuming words, so it would accept a line whose unreachable tail held a bad end time; svlm-jax refuses
such a line rather than guess.

`read_jsonl` never aborts on a bad line: it skips it and counts the reason in a `ValidationReport`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Iterable, Sequence

# Reasons a record is skipped; the report counts each.
REASONS = {
    "malformed": "not a [user, assistant] conversation in the documented layout",
    "bad_span": "video_end is not after video_start",
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
    words: ((start, end, word), ...) in file order, each word stripped; start is None where the line's is
    not a finite number (it is never read, see the module docstring); previous: commentary before
    `start`; query: the user text, if any (the original's training never uses it);
    qa: ((tag, time, question, answer), ...) from the qa_stream, in file order.
    """

    video: str
    start: float
    end: float
    words: tuple[tuple[float | None, float, str], ...]
    previous: str = ""
    query: str | None = None
    qa: tuple[tuple[Any, float, str, str], ...] = ()

    @property
    def reversed_words(self) -> int:
        """Words whose start is after their end: harmless, as only end times are read."""
        return sum(1 for s, e, _ in self.words if s is not None and s > e)


@dataclasses.dataclass
class ValidationReport:
    """How many lines were read, kept and skipped (per reason), with a few example line numbers."""

    source: str = ""
    lines: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    reversed_words: int = 0  # kept words whose start is after their end

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
        if self.reversed_words:
            rows.append(f"  {self.reversed_words} words start after they end (kept: only end times are used)")
        return "\n".join([head] + rows)


def _num(x: Any, what: str) -> float:
    try:  # an integer too large for a float overflows here
        ok = not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
    except OverflowError:
        ok = False
    if not ok:
        raise RecordError("malformed", f"{what} must be a finite number, got {str(x)[:40]}")
    return float(x)


def _start_time(x: Any) -> float | None:
    """A word's start as a float, or None when it is not a finite number (never read, so never an error)."""
    try:
        return float(x) if not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) else None
    except OverflowError:
        return None


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
    if end <= start:  # the original finds no frame in such a clip and raises
        raise RecordError("bad_span", f"video_end {end} is not after video_start {start}")
    words = []
    for i, w in enumerate(stream_el["text_stream"]):
        if not (isinstance(w, (list, tuple)) and len(w) >= 3 and isinstance(w[2], str)):
            raise RecordError("malformed", f"text_stream item {i} must be [start, end, word]")
        # The original compares the end with each round's end, so it must be a number; the start is never read.
        we = _num(w[1], f"word {i} end")
        words.append((_start_time(w[0]), we, w[2].strip()))
    qa = []
    for i, q in enumerate(stream_el.get("qa_stream") or []):
        if not (isinstance(q, (list, tuple)) and len(q) >= 4 and isinstance(q[2], str) and isinstance(q[3], str)):
            raise RecordError("malformed", f"qa_stream item {i} must be [tag, time, question, answer]")
        qa.append((q[0], _num(q[1], f"qa {i} time"), q[2], q[3]))
    # As the original: the last user content element that has `previous` wins.
    previous = ""
    for m in obj:
        if m.get("role") == "user" and isinstance(m.get("content"), list):
            for c in m["content"]:
                if isinstance(c, dict) and "previous" in c:
                    previous = c["previous"]
    previous = previous or ""
    if not isinstance(previous, str):
        raise RecordError("malformed", "previous must be a string")
    query = next((c.get("text") for c in ucontent if isinstance(c, dict) and isinstance(c.get("text"), str)), None)
    path = video if os.path.isabs(video) else os.path.join(video_root, video)
    if check_video:
        if not os.path.isfile(path):
            raise RecordError("missing_video", f"video {path!r} does not exist")
        if os.path.getsize(path) == 0:
            raise RecordError("empty_video", f"video {path!r} is 0 bytes")
    return Record(video=path, start=start, end=end, words=tuple(words), previous=previous,
                  query=query or None, qa=tuple(qa))


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
    with open(path, "rb") as f:  # bytes: one line that is not UTF-8 is skipped, not fatal to the file
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                rec = parse_record(json.loads(raw.decode("utf-8")), root, check_video=check_video)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
                report.add("malformed", n)
                continue
            except RecordError as e:
                report.add(e.reason, n)
                continue
            report.kept += 1
            report.reversed_words += rec.reversed_words
            yield rec


def read_jsonl(path: str | os.PathLike, video_root: str | None = None, *,
               check_video: bool = True) -> tuple[list[Record], ValidationReport]:
    """All good records of a JSONL file and the report of what was skipped."""
    report = ValidationReport()
    records = list(iter_jsonl(path, video_root, check_video=check_video, report=report))
    return records, report


def record_to_json(video: str, start: float, end: float, words: Iterable[tuple[float, float, str]], *,
                   previous: str = "", query: str | None = None, qa: Iterable[Sequence[Any]] = ()) -> list[dict]:
    """The JSON conversation for one annotated span (the inverse of `parse_record`).

    Laid out as the released files: exactly two user elements, the video first, then a text element
    holding `previous` (LiveCC's producer puts it there).
    """
    vid: dict[str, Any] = {"type": "video", "video": video, "video_start": start, "video_end": end}
    text: dict[str, Any] = {"type": "text", "text": query or ""}
    if previous:
        text["previous"] = previous
    stream = [[None if s is None else round(float(s), 3), round(float(e), 3), w] for s, e, w in words]
    el: dict[str, Any] = {"type": "text_stream", "text_stream": stream}
    qa = [list(q) for q in qa]
    if qa:
        el["qa_stream"] = qa
    return [{"role": "user", "content": [vid, text]}, {"role": "assistant", "content": [el]}]
