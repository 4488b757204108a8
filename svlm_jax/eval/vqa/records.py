"""One benchmark question, what reading a benchmark found, and the errors a reader raises.

A `Question` is benchmark-neutral: the reader fills in the clip to show, the prompt text and how the answer
is checked; the protocol table (`protocols.py`) says how the benchmark's original asks and scores it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from svlm_jax.errors import DataError


class RecordError(DataError):
    """A malformed annotation record: names its file and line (or index) and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of a benchmark.

    qid: unique and stable across runs (the resume key). task: the benchmark's task name; group: the
    category the benchmark averages it into (OVO-Bench: realtime/backward/forward; others: a secondary
    breakdown such as Video-MME's duration). video: absolute path of the video file or frame folder.
    start/end: the clip the original shows offline, seconds (end None = to the end of the video).
    text: the user text after the video (the benchmark's exact prompt); pre_text: user text before the
    video (MVBench only). options: the choices as the prompt shows them ("A. ..."), () for open answers.
    answer: the reference answer string the original's matcher compares with ("A", "Yes", "3").
    ask_at: stream time, seconds, at which the question is asked in streaming mode (None: at the end of
    the clip). extra: raw fields
    the scorers need (OVO-Bench: the official scorer's ground truth).
    """

    bench: str
    qid: str
    task: str
    group: str
    video: str
    start: float
    end: float | None
    text: str
    answer: str
    options: tuple[str, ...] = ()
    pre_text: str = ""
    ask_at: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass
class ReadReport:
    """What a reader found: the usable questions, the ones whose video is missing, and malformed records.

    missing: (qid, video path) of questions skipped because the video file or folder does not exist;
    malformed: one message per bad record, naming the file and line.
    """

    questions: list[Question]
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    malformed: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: how many questions were read, skipped for a missing video, and malformed."""
        vids = len({v for _, v in self.missing})
        return (f"{len(self.questions)} questions; {len(self.missing)} skipped for {vids} missing videos; "
                f"{len(self.malformed)} malformed records")
