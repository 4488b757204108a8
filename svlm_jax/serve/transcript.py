"""A session's transcript (each second's commentary and each answer) as WebVTT or JSON lines."""
from __future__ import annotations

import json
from typing import Any, Iterable

from svlm_jax.webvtt import cue_text, vtt_time


def to_vtt(entries: Iterable[dict[str, Any]]) -> str:
    """WebVTT: one cue per non-empty commentary; an answer is a cue of two lines "Q: question" and "A: answer".

    Every line goes through `webvtt.cue_text` (whitespace folded, &, <, > escaped), so no viewer's text can
    end a cue, start another, or hold markup.
    """
    out = ["WEBVTT", ""]
    for e in entries:
        if e["type"] == "answer":
            text = f"Q: {cue_text(e['question'])}\nA: {cue_text(e['text'])}"
        elif cue_text(e["text"]):
            text = cue_text(e["text"])
        else:
            continue  # a silent second
        out += [f"{vtt_time(e['t0'])} --> {vtt_time(e['t1'])}", text, ""]
    return "\n".join(out) + "\n"


def to_jsonl(entries: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line: every commentary (silent ones included) and every answer, in order."""
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


FORMATS = {"vtt": ("text/vtt; charset=utf-8", to_vtt), "jsonl": ("application/x-ndjson", to_jsonl)}
