"""Readers for the released annotation files of OVO-Bench, LongVideoBench, Video-MME and MVBench.

Each reader takes the benchmark's directory as released (layouts below) and returns a `ReadReport`: the
questions in file order, the questions skipped because their video is missing, and malformed records
(each named by file and line). Prompt text is built here from the protocol constants (`protocols.py`).

Layouts (relative to the directory given):
  OVO-Bench       ovo_bench_new.json (the released list) or ovo-bench-formatted.jsonl (LiveCC's
                  transfer_annotation_format.py output); videos at the record's `video` path, or under
                  src_videos/.
  LongVideoBench  lvb_val.json; videos at videos/<video_path>.
  Video-MME       videomme/test-00000-of-00001.parquet (any *.parquet found under the directory);
                  videos at video/<videoID>.mp4 or data/<videoID>.mp4 (the released zips unpack to data/).
  MVBench         json/<task>.json for the 20 tasks; videos under video/<prefix>/ per `MVBENCH_TASKS`.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Callable, Iterator

from svlm_jax.eval.vqa import protocols as P
from svlm_jax.errors import DataNotFound
from svlm_jax.eval.vqa.records import Question, ReadReport, RecordError

# MVBench's task table as VLMEvalKit defines it: task -> (json file, folder under video/, data type, bounded).
# A bounded task's records carry start/end (seconds); "frame" tasks are folders of 3-fps JPEGs.
MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", "video", False),
    "Action Count": ("action_count.json", "perception/videos", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", "video", False),
    "State Change": ("state_change.json", "perception/videos", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", "video", False),
    "Character Order": ("character_order.json", "perception/videos", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", "video", False),
}
LETTERS = "ABCDEFGHIJ"


# ------------------------------------------------------------------------------------------ JSON with lines
def json_array_records(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, element) for each element of the JSON array in `path`.

    Elements are decoded one at a time so each keeps the line it starts on; a syntax error raises
    RecordError naming the file and line.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    dec = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def fail(i: int, what: str):
        line = text.count("\n", 0, i) + 1
        raise RecordError(f"{path}:{line}: {what}; the file is not a JSON array of records, re-download it.")

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        fail(i, "expected '['")
    i, line, counted = skip(i + 1), 1, 0
    if i < len(text) and text[i] == "]":
        return
    while True:
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            fail(e.pos, f"invalid JSON ({e.msg})")
        yield line, obj
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] == "]":
            return
        else:
            fail(i, "expected ',' or ']'")


def jsonl_records(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) for each non-blank line of a JSON-lines file; a bad line is yielded as
    (line, RecordError) so the caller can report it and go on."""
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except json.JSONDecodeError as e:
                yield n, RecordError(f"{path}:{n}: invalid JSON ({e.msg}).")


def _need(rec: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}.")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}.")


def _collect(records: Iterator[tuple[int, Any]], path: str, build: Callable[[Any, str], list[Question]],
             report: ReadReport) -> None:
    """Build questions from (line, record) pairs; bad records go to report.malformed, missing videos to
    report.missing."""
    for line, rec in records:
        where = f"{path}:{line}"
        if isinstance(rec, RecordError):
            report.malformed.append(str(rec))
            continue
        try:
            qs = build(rec, where)
        except RecordError as e:
            report.malformed.append(str(e))
            continue
        except (KeyError, TypeError, ValueError, IndexError) as e:
            report.malformed.append(f"{where}: {type(e).__name__}: {e}.")
            continue
        for q in qs:
            if os.path.exists(q.video):
                report.questions.append(q)
            else:
                report.missing.append((q.qid, q.video))


def _seconds(x: Any, where: str, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise RecordError(f"{where}: {name} must be a number of seconds, got {x!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise RecordError(f"{where}: {name} must be a non-negative number of seconds, got {x!r}.")
    return v


# ------------------------------------------------------------------------------------------ OVO-Bench
def _ovo_group(task: str) -> str:
    for g, tasks in P.OVO_GROUPS.items():
        if task in tasks:
            return g
    raise RecordError(f"unknown OVO-Bench task {task!r} (known: {', '.join(sum(P.OVO_GROUPS.values(), ()))})")


def _ovo_video(root: str, video: str) -> str:
    """A record's video: relative to the annotation's directory (as LiveCC joins it), else under src_videos/."""
    path = os.path.join(root, video)
    alt = os.path.join(root, "src_videos", video)
    return alt if not os.path.exists(path) and os.path.exists(alt) else path


def _ovo_mcq_text(question: str, options: list[str]) -> str:
    return question + "\n" + "\n".join(options) + P.OVO_MCQ_POSTFIX


def _ovo_raw(root: str) -> Callable[[Any, str], list[Question]]:
    """Builder for records of the released ovo_bench_new.json (docs/ORIGINAL.md §OVO-Bench), one Question per poll."""

    def build(rec: Any, where: str) -> list[Question]:
        _need(rec, ("id", "task", "video"), where)
        task = str(rec["task"])
        try:
            group = _ovo_group(task)
        except RecordError as e:
            raise RecordError(f"{where}: {e}.") from None
        video = _ovo_video(root, str(rec["video"]))
        base = f"ovo/{rec['id']}"
        if group != "forward":
            _need(rec, ("realtime", "question", "options", "gt"), where)
            opts = list(rec["options"])
            gt = int(rec["gt"])
            if not 0 <= gt < len(opts) or len(opts) > len(P.OVO_LETTERS):
                raise RecordError(f"{where}: gt {gt} does not index the {len(opts)} options (at most 5).")
            options = tuple(f"{P.OVO_LETTERS[i]}. {o}" for i, o in enumerate(opts))
            t = _seconds(rec["realtime"], where, "realtime")
            letter = P.OVO_LETTERS[gt]
            return [Question("ovo", base, task, group, video, 0.0, t, _ovo_mcq_text(str(rec["question"]), list(options)),
                             letter, options, ask_at=t, extra={"truth": {"letter": letter}})]
        _need(rec, ("test_info",), where)
        if not isinstance(rec["test_info"], list) or not rec["test_info"]:
            raise RecordError(f"{where}: test_info must be a non-empty list of polls.")
        out = []
        for i, info in enumerate(rec["test_info"]):
            w = f"{where} test_info[{i}]"
            _need(info, ("realtime",), w)
            t = _seconds(info["realtime"], w, "realtime")
            if task == "CRR":
                _need(rec, ("question", "ask_time"), where)
                _need(info, ("type",), w)
                text = P.OVO_CRR_TEMPLATE.format(question=rec["question"])
                start = _seconds(rec["ask_time"], where, "ask_time")
                answer, truth = P.OVO_YES_NO[int(info["type"])], {"type": int(info["type"])}
            elif task == "SSR":
                _need(info, ("step", "type"), w)
                text, start = P.OVO_SSR_TEMPLATE.format(step=info["step"]), 0.0
                answer, truth = P.OVO_YES_NO[int(info["type"])], {"type": int(info["type"])}
            else:  # REC
                _need(rec, ("activity",), where)
                _need(info, ("count",), w)
                text, start = P.OVO_REC_TEMPLATE.format(activity=rec["activity"]), 0.0
                answer, truth = P.OVO_REC_ANSWERS[int(info["count"])], {"count": int(info["count"])}
            out.append(Question("ovo", f"{base}/{i}", task, group, video, start, t, text, answer, ask_at=t,
                                extra={"truth": truth}))
        return out

    return build


def _ovo_formatted(root: str) -> Callable[[Any, str], list[Question]]:
    """Builder for LiveCC's ovo-bench-formatted.jsonl lines ({id,task,question,video,video_start,video_end,
    answer[,options]}); polls of one id are numbered in file order."""
    seen: dict[str, int] = {}

    def build(rec: Any, where: str) -> list[Question]:
        _need(rec, ("id", "task", "question", "video", "video_start", "video_end", "answer"), where)
        task = str(rec["task"])
        try:
            group = _ovo_group(task)
        except RecordError as e:
            raise RecordError(f"{where}: {e}.") from None
        start = _seconds(rec["video_start"], where, "video_start")
        end = _seconds(rec["video_end"], where, "video_end")
        answer = str(rec["answer"])
        if group == "forward":
            k = seen.get(str(rec["id"]), 0)
            seen[str(rec["id"])] = k + 1
            qid, text, options = f"ovo/{rec['id']}/{k}", str(rec["question"]), ()
            truth = {"count": int(answer)} if task == "REC" else {"type": P.OVO_YES_NO.index(answer)}
        else:
            options = tuple(str(o) for o in rec.get("options", ()))
            qid, text, truth = f"ovo/{rec['id']}", _ovo_mcq_text(str(rec["question"]), list(options)), {"letter": answer}
        return [Question("ovo", qid, task, group, _ovo_video(root, str(rec["video"])), start, end, text, answer,
                         options, ask_at=end, extra={"truth": truth})]

    return build


def read_ovo(root: str) -> ReadReport:
    """OVO-Bench from `root`: ovo_bench_new.json (preferred) or ovo-bench-formatted.jsonl."""
    report = ReadReport([])
    raw, fmt = os.path.join(root, "ovo_bench_new.json"), os.path.join(root, "ovo-bench-formatted.jsonl")
    if os.path.exists(raw):
        _collect(json_array_records(raw), raw, _ovo_raw(root), report)
    elif os.path.exists(fmt):
        _collect(jsonl_records(fmt), fmt, _ovo_formatted(root), report)
    else:
        raise DataNotFound(f"No OVO-Bench annotations in {root}: expected ovo_bench_new.json or "
                                f"ovo-bench-formatted.jsonl; point --data at the unpacked OVO-Bench directory.")
    return report


# ------------------------------------------------------------------------------------------ LongVideoBench
def read_lvb(root: str) -> ReadReport:
    """LongVideoBench validation set from `root`/lvb_val.json with videos in `root`/videos/."""
    path = os.path.join(root, "lvb_val.json")
    if not os.path.exists(path):
        raise DataNotFound(f"No {path}; point --data at the LongVideoBench directory holding lvb_val.json.")

    def build(rec: Any, where: str) -> list[Question]:
        _need(rec, ("video_path", "question", "candidates", "correct_choice", "duration_group",
                    "question_category"), where)
        cands = list(rec["candidates"])
        k = int(rec["correct_choice"])
        if not 0 <= k < len(cands) or len(cands) > 5:
            raise RecordError(f"{where}: correct_choice {k} does not index the {len(cands)} candidates (at most 5).")
        options = tuple(f"{LETTERS[i]}. {c}" for i, c in enumerate(cands))
        text = f"{rec['question']}\n" + "\n".join(options) + P.LVB_POSTFIX
        qid = f"lvb/{rec.get('id', where.rsplit(':', 1)[-1])}"
        return [Question("lvb", qid, str(rec["question_category"]), str(rec["duration_group"]),
                         os.path.join(root, "videos", str(rec["video_path"])), 0.0, None, text, LETTERS[k], options)]

    report = ReadReport([])
    _collect(json_array_records(path), path, build, report)
    return report


# ------------------------------------------------------------------------------------------ Video-MME
def _find_parquet(root: str) -> str:
    preferred = os.path.join(root, "videomme", "test-00000-of-00001.parquet")
    if os.path.exists(preferred):
        return preferred
    found = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    if not found:
        raise DataNotFound(f"No Video-MME parquet under {root}; expected videomme/test-00000-of-00001.parquet "
                                f"from lmms-lab/Video-MME.")
    return found[0]


def parquet_rows(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (row number from 1, row dict) of a parquet file (pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        raise RuntimeError("Reading Video-MME needs pyarrow; pip install pyarrow.") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise RecordError(f"{path}: not a readable parquet file ({e}); re-download it.") from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield i, row


def _videomme_video(root: str, vid: str) -> str:
    for sub in ("video", "data"):
        p = os.path.join(root, sub, f"{vid}.mp4")
        if os.path.exists(p):
            return p
    return os.path.join(root, "video", f"{vid}.mp4")


def read_videomme(root: str) -> ReadReport:
    """Video-MME (without subtitles) from the lmms-lab parquet under `root`; videos in video/ or data/."""
    path = _find_parquet(root)

    def build(rec: Any, where: str) -> list[Question]:
        where = where.replace(f"{path}:", f"{path} row ")
        _need(rec, ("videoID", "duration", "task_type", "question", "options", "answer"), where)
        options = tuple(str(o) for o in rec["options"])
        if len(options) != 4 or str(rec["answer"]) not in "ABCD" or not str(rec["answer"]):
            raise RecordError(f"{where}: expected 4 options and an answer letter A-D, got {len(options)} options "
                              f"and answer {rec['answer']!r}.")
        text = P.VIDEOMME_PROMPT + P.VIDEOMME_QUESTION.format(question=rec["question"], options="\n".join(options))
        qid = f"videomme/{rec.get('question_id', where.rsplit(' ', 1)[-1])}"
        return [Question("videomme", qid, str(rec["task_type"]), str(rec["duration"]),
                         _videomme_video(root, str(rec["videoID"])), 0.0, None, text, str(rec["answer"]), options)]

    report = ReadReport([])
    _collect(parquet_rows(path), path, build, report)
    return report


# ------------------------------------------------------------------------------------------ MVBench
def read_mvbench(root: str) -> ReadReport:
    """MVBench from `root`/json/*.json with videos under `root`/video/ (VLMEvalKit's task table)."""
    jdir = os.path.join(root, "json")
    if not os.path.isdir(jdir):
        raise DataNotFound(f"No {jdir}; point --data at the MVBench directory holding json/ and video/.")
    report = ReadReport([])
    for task, (fname, prefix, kind, bound) in MVBENCH_TASKS.items():
        path = os.path.join(jdir, fname)
        if not os.path.exists(path):
            continue  # a partial download: the tasks present are evaluated, the table says which

        def build(rec: Any, where: str, task=task, prefix=prefix, kind=kind, bound=bound, fname=fname) -> list[Question]:
            _need(rec, ("video", "question", "candidates", "answer") + (("start", "end") if bound else ()), where)
            cands = [str(c) for c in rec["candidates"]]
            hits = [i for i, c in enumerate(cands) if c == str(rec["answer"])]
            if not hits or len(cands) > len(LETTERS):
                raise RecordError(f"{where}: the answer {rec['answer']!r} is not one of the candidates {cands}.")
            body = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(cands))
            text = f"Question: {rec['question']}\nOptions:\n{body}" + P.MVBENCH_POSTFIX + P.MVBENCH_ANSWER_CUE
            start = _seconds(rec["start"], where, "start") if bound else 0.0
            end = _seconds(rec["end"], where, "end") if bound else None
            n = int(where.rsplit(":", 1)[-1])
            return [Question("mvbench", f"mvbench/{fname[:-5]}/{n}", task, task,
                             os.path.join(root, "video", prefix, str(rec["video"])), start, end, text,
                             LETTERS[hits[-1]], tuple(f"({LETTERS[i]}) {c}" for i, c in enumerate(cands)),
                             pre_text=P.MVBENCH_SYSTEM, extra={"frames_dir": kind == "frame"})]

        _collect(json_array_records(path), path, build, report)
    if not report.questions and not report.missing and not report.malformed:
        raise DataNotFound(f"No MVBench task files in {jdir}; expected e.g. {MVBENCH_TASKS['Action Count'][0]}.")
    return report


READERS: dict[str, Callable[[str], ReadReport]] = {
    "ovo": read_ovo, "lvb": read_lvb, "videomme": read_videomme, "mvbench": read_mvbench}


def read_bench(bench: str, root: str) -> ReadReport:
    """Read benchmark `bench` (one of protocols.BENCHES) from directory `root`."""
    if bench not in READERS:
        raise ValueError(f"Unknown benchmark {bench!r}; choose one of {', '.join(READERS)}.")
    if not os.path.isdir(root):
        raise DataNotFound(f"Benchmark directory {root} does not exist; pass the unpacked benchmark directory.")
    return READERS[bench](root)
