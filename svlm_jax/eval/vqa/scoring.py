"""Answer choice from logits, per-question checks, and the scores each benchmark reports.

`OptionSet` holds the token ids the original lets the model answer with: OVO-Bench's 17 strings (the last
token of "\\n" + option) or VLMEvalKit's one-token answers A-F/Yes/No. `choose` takes the argmax over them.
`aggregate` turns prediction records into per-task accuracy, group averages and the overall score, the
way each benchmark defines them (`protocols.Protocol.group_mean` / `overall`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from svlm_jax.eval.vqa import protocols as P
from svlm_jax.tokenizer import ChatTokenizer


@dataclasses.dataclass(frozen=True)
class OptionSet:
    """ids [K] token ids the answer may take; labels [K] the response string each one stands for."""

    ids: tuple[int, ...]
    labels: tuple[str, ...]

    def choose(self, logits: np.ndarray) -> list[str]:
        """logits [B, V] -> the label of the highest-scoring allowed token per row (first one on ties)."""
        sub = np.asarray(logits)[:, list(self.ids)]  # [B, K]
        return [self.labels[i] for i in np.argmax(sub, axis=-1)]


def ovo_options(tok: ChatTokenizer) -> OptionSet:
    """OVO-Bench's 17-way choice (`distributed_evaluate_ovobench.py`): the last token of "\\n" + o for o in
    OVO_OPTIONS."""
    return OptionSet(tuple(tok.encode(P.OVO_OPTION_LEAD + o)[-1] for o in P.OVO_OPTIONS), P.OVO_OPTIONS)


def restricted_options(tok: ChatTokenizer) -> OptionSet:
    """VLMEvalKit's allowed one-token answers (`qwen2_vl/model.py`): every vocabulary token that decodes to A-F,
    Yes or No, bare, space-prefixed or "▁"-prefixed, in id order (greedy ties go to the lowest id, as HF's argmax)."""
    allowed = {lead + w for w in P.RESTRICTED_WORDS for lead in P.RESTRICTED_LEADS}
    vocab = tok.vocab_size
    texts = tok.tokenizer.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    ids = [i for i, t in enumerate(texts) if t in allowed]
    if not ids:
        raise ValueError("The tokenizer has no token that decodes to A-F/Yes/No; it cannot answer these benchmarks.")
    return OptionSet(tuple(ids), tuple(texts[i] for i in ids))


def option_set(bench: str, tok: ChatTokenizer) -> OptionSet:
    """The option tokens of benchmark `bench`'s original protocol."""
    return ovo_options(tok) if P.PROTOCOLS[bench].scoring == "ovo17" else restricted_options(tok)


def is_correct(bench: str, response: str, answer: str) -> bool:
    """The original's check of one response (protocols.PROTOCOLS[bench].match)."""
    return bool(P.PROTOCOLS[bench].match(response, answer))


# ------------------------------------------------------------------------------------------ aggregation
def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def aggregate(bench: str, records: Iterable[dict[str, Any]], key: str = "correct") -> dict[str, Any]:
    """Scores of prediction records (each with task, group and a boolean `key`), in percent.

    Returns {"n", "tasks": {task: {"n", "acc"}}, "groups": {group: acc}, "overall": acc}. Group and overall
    averages follow the benchmark: OVO-Bench averages task accuracies with equal weight (Real-time = mean of
    OCR, ACR, ATR, STU, FPD, OJR; overall = mean of all task accuracies, as OVOBenchScore.py's total);
    the VLMEvalKit benchmarks average over questions.
    """
    proto = P.PROTOCOLS[bench]
    by_task: dict[str, list[bool]] = {}
    by_group: dict[str, list[bool]] = {}
    task_group: dict[str, str] = {}
    n = 0
    for r in records:
        if r.get(key) is None:
            continue
        n += 1
        by_task.setdefault(r["task"], []).append(bool(r[key]))
        by_group.setdefault(r["group"], []).append(bool(r[key]))
        task_group[r["task"]] = r["group"]
    tasks = {t: {"n": len(v), "acc": 100 * _mean(v)} for t, v in sorted(by_task.items())}
    if proto.group_mean == "tasks":
        groups = {g: _mean([tasks[t]["acc"] for t in tasks if task_group[t] == g]) for g in sorted(by_group)}
    else:
        groups = {g: 100 * _mean(v) for g, v in sorted(by_group.items())}
    if proto.overall == "tasks":
        overall = _mean([v["acc"] for v in tasks.values()])
    else:
        overall = 100 * _mean([x for v in by_task.values() for x in v]) if n else None
    return {"n": n, "tasks": tasks, "groups": groups, "overall": overall}


def headline(bench: str, scores: dict[str, Any]) -> tuple[str, float | None]:
    """The number the paper's table reports (the paper's Table 1): OVO-Bench Real-time, else overall."""
    if bench == "ovo":
        return "Real-time", scores["groups"].get("realtime")
    return "overall", scores["overall"]


def table(bench: str, scores: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of per-task accuracy, group averages and the overall score, one column per scorer."""
    names = list(scores)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"| {P.PROTOCOLS[bench].name} | n | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    first = scores[names[0]]
    for t, v in first["tasks"].items():
        lines.append(f"| {t} | {v['n']} | " + " | ".join(fmt(s["tasks"].get(t, {}).get("acc")) for s in
                                                         scores.values()) + " |")
    for g in first["groups"]:
        lines.append(f"| **{g}** | | " + " | ".join(fmt(s["groups"].get(g)) for s in scores.values()) + " |")
    lines.append(f"| **overall** | {first['n']} | " + " | ".join(fmt(s["overall"]) for s in scores.values()) + " |")
    return "\n".join(lines)
