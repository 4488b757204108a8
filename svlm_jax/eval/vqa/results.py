"""The run's files: an append-only predictions file that survives a kill, and the final scores.

predictions.jsonl  one JSON object per answered question, written and flushed (fsync) as each is answered.
                   On restart a torn last line is cut off and the questions already in the file are skipped,
                   so a resumed run ends with the same file as an uninterrupted one.
scores.json        written atomically at the end: per-task accuracy, group averages, overall, the paper's
                   headline number, the read report, and every prediction.
table.md           the same scores as a Markdown table.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from svlm_jax.eval.vqa import scoring
from svlm_jax.eval.vqa.records import ReadReport

PREDICTIONS, SCORES, TABLE = "predictions.jsonl", "scores.json", "table.md"


class Predictions:
    """Append-only JSON-lines file of predictions keyed by `qid`."""

    def __init__(self, path: str):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            keep = data[:data.rfind(b"\n") + 1]  # a kill mid-write leaves a torn last line: drop it
            if len(keep) != len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
            for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        raise ValueError(f"{path}:{n} is not JSON; the predictions file was edited. Move it away "
                                         f"to start over.") from None
                    self.done[rec["qid"]] = rec
        self._f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        """Append one prediction and make it durable before returning."""
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[rec["qid"]] = rec

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Predictions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path + ".part"
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finish(bench: str, mode: str, records: Iterable[dict[str, Any]], out_dir: str, report: ReadReport,
           unreadable: list[tuple[str, str]]) -> dict[str, Any]:
    """Score the predictions, write scores.json and table.md, and return the scores dict."""
    recs = list(records)
    scorers = {"argmax": scoring.aggregate(bench, recs, "correct")}
    if any(r.get("official_correct") is not None for r in recs):
        scorers["official"] = scoring.aggregate(bench, recs, "official_correct")
    name, value = scoring.headline(bench, scorers["argmax"])
    out = {
        "bench": bench, "mode": mode, "headline": {"name": name, "value": value},
        "scores": scorers,
        "read": {"questions": len(report.questions), "missing_videos": len({v for _, v in report.missing}),
                 "missing_questions": len(report.missing), "malformed": report.malformed,
                 "unreadable_videos": sorted({v for _, v in unreadable}), "unreadable_questions": len(unreadable)},
        "predictions": recs,
    }
    tab = scoring.table(bench, scorers)
    write_atomic(os.path.join(out_dir, SCORES), json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    write_atomic(os.path.join(out_dir, TABLE), tab + "\n")
    out["table"] = tab
    return out
