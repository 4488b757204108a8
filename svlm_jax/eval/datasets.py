"""Readers for the commentary benchmarks' files, in the released layouts (docs/ORIGINAL.md §Inf-Streams-Eval,
§LiveSports-3K-CC).

Every reader skips bad lines instead of failing the whole run, and says why in a `Problems` tally:
a malformed line, a game whose video is missing, a window with no content. Callers print the tally and
exit non-zero only when nothing usable is left.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Callable, Iterator

from svlm_jax.errors import DataNotFound

METADATA = "eval_all_metadata.jsonl"


class Problems:
    """Counted, explained skips: `add(kind, message)`; `counts` by kind; `messages` in order."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.messages: list[str] = []

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.messages.append(message)

    def extend(self, *others: "Problems") -> None:
        """Add the counts and messages of `others` to these."""
        for o in others:
            self.counts.update(o.counts)
            self.messages += o.messages

    def __len__(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: `kind=n, ...` or "none"."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"


def iter_jsonl(path: str | os.PathLike, problems: Problems | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON-object line of `path`; blank lines are skipped and other bad lines
    are counted as "malformed" in `problems` (a torn last line of a killed writer is one of them)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if problems is not None:
                    problems.add("malformed", f"{path}:{n}: not JSON ({e.msg}); line skipped.")
                continue
            if not isinstance(obj, dict):
                if problems is not None:
                    problems.add("malformed", f"{path}:{n}: a JSON {type(obj).__name__}, not an object; skipped.")
                continue
            yield n, obj


def _read(path, parse: Callable[[dict], Any], problems: Problems) -> list[tuple[int, Any]]:
    out = []
    for n, obj in iter_jsonl(path, problems):
        try:
            out.append((n, parse(obj)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            problems.add("malformed", f"{path}:{n}: {type(e).__name__}: {e}; line skipped.")
    return out


def _words(content) -> tuple[tuple[float, float, str], ...]:
    if not isinstance(content, list) or not content:
        raise ValueError("`content` must be a non-empty list of [start, end, text]")
    return tuple((float(w[0]), float(w[1]), str(w[2])) for w in content)


# ---------------------------------------------------------------------------- Inf-Streams-Eval
@dataclasses.dataclass(frozen=True)
class Game:
    """One game of eval_all_metadata.jsonl: `video` as stored (relative), `path` on disk, `content` the
    whole game's ground-truth words (start, end, word). `key` is the basename, the id used downstream."""

    video: str
    path: str
    content: tuple[tuple[float, float, str], ...]

    @property
    def key(self) -> str:
        return os.path.basename(self.video)

    @property
    def end(self) -> int:
        """The stream's end second: int(end time of the last word), as the original."""
        return int(self.content[-1][1])


def read_games(root: str | os.PathLike, metadata: str | None = None) -> tuple[list[Game], Problems]:
    """Games of `<root>/eval_all_metadata.jsonl` (or `metadata`), videos resolved under `root`.

    Malformed lines and games whose video file is missing are skipped and counted.
    """
    problems = Problems()
    path = metadata or os.path.join(root, METADATA)
    if not os.path.exists(path):
        raise DataNotFound(f"No {os.path.basename(path)} at {path}; point --data at the Inf-Streams-Eval "
                           f"directory (it holds {METADATA} and the game videos).")
    games, seen = [], set()
    for n, g in _read(path, lambda o: Game(str(o["video"]), os.path.join(root, str(o["video"])),
                                           _words(o["content"])), problems):
        if g.key in seen:
            problems.add("duplicate", f"{path}:{n}: {g.key} appears twice; the later line is skipped.")
        elif not os.path.isfile(g.path):
            problems.add("missing_video", f"{path}:{n}: video {g.path} not found; game skipped.")
        else:
            seen.add(g.key)
            games.append(g)
    return games, problems


def phrase_before(content, t: float) -> str:
    """The ground truth said before second `t`: " " + word.strip() for each word in order while its end time
    is <= t, stopping at the first word that ends later (the original's get_phrase_before_timestamp, so a word
    with start > end counts by its end, and a late-ending word hides every word after it)."""
    out = []
    for _, we, word in content:
        if we > t:
            break
        out.append(" " + str(word).strip())
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Window:
    """One scoring window of temp_score_clips.jsonl: int bounds from its first start and last end, the reference
    as its texts joined by newlines, and the timed reference for the judge-free metrics."""

    video: str
    start: int
    end: int
    reference: str
    title: str
    content: tuple[tuple[float, float, str], ...]

    @property
    def key(self) -> str:
        return os.path.basename(self.video)

    @property
    def id(self) -> str:
        """The window's identity in caches and tables: basename:start-end."""
        return f"{self.key}:{self.start}-{self.end}"


def _window(o: dict) -> Window:
    content = _words(o["content"])
    return Window(video=str(o["video"]), start=int(content[0][0]), end=int(content[-1][1]),
                  reference="\n".join(w[2] for w in content), title=str(o.get("title") or ""), content=content)


def read_windows(path: str | os.PathLike) -> tuple[list[Window], Problems]:
    """Scoring windows, deduplicated on (video, start, end) as merge_score.py does; malformed lines counted."""
    problems = Problems()
    if not os.path.exists(path):
        raise DataNotFound(f"No scoring windows at {path}; pass --clips temp_score_clips.jsonl.")
    out, seen = [], set()
    for n, w in _read(path, _window, problems):
        if (w.key, w.start, w.end) in seen:
            problems.add("duplicate", f"{path}:{n}: window {w.id} appears twice; the later line is skipped.")
            continue
        seen.add((w.key, w.start, w.end))
        out.append(w)
    return out, problems


def read_merged(path: str | os.PathLike) -> tuple[dict[str, dict], Problems]:
    """A merged_result.jsonl: basename -> {"video", "chunk_start", "chunk_end", "items"}."""
    problems = Problems()
    if not os.path.exists(path):
        raise DataNotFound(f"No merged results at {path}; run `generate` first or pass the right file.")

    def parse(o):
        return dict(o, video=os.path.basename(str(o["video"])), chunk_start=int(o["chunk_start"]),
                    chunk_end=int(o["chunk_end"]), items=list(o.get("items") or []))
    return {m["video"]: m for _, m in _read(path, parse, problems)}, problems


# ---------------------------------------------------------------------------- LiveSports-3K-CC
@dataclasses.dataclass(frozen=True)
class Event:
    """One LiveSports-3K-CC event (the HF test split exported to JSONL): clip [begin, end) of `path`."""

    video: str
    path: str
    video_id: str
    event_id: str
    begin: float
    end: float
    title: str
    preasr: str
    asr: str

    @property
    def id(self) -> str:
        """video_id + "_" + event_id, the original's key."""
        return f"{self.video_id}_{self.event_id}"


def read_events(path: str | os.PathLike, root: str | os.PathLike | None = None,
                need_video: bool = True) -> tuple[list[Event], Problems]:
    """Events of a LiveSports_3K_CC JSONL export; `video` resolved under `root`. With need_video, events whose
    video is missing are skipped and counted (judging needs only the texts: need_video=False)."""
    problems = Problems()
    if not os.path.exists(path):
        raise DataNotFound(f"No events file at {path}; export the LiveSports_3K_CC test split to JSONL first "
                           f"(docs/EVALUATION.md).")

    def parse(o):
        video = str(o["video"])
        return Event(video=video, path=os.path.join(root or "", video), video_id=str(o["video_id"]),
                     event_id=str(o["event_id"]), begin=float(o["begin"]), end=float(o["end"]),
                     title=str(o.get("event_title") or ""), preasr=str(o.get("preasr_text") or ""),
                     asr=str(o.get("event_asr_text") or ""))
    out = []
    for n, e in _read(path, parse, problems):
        if need_video and not os.path.isfile(e.path):
            problems.add("missing_video", f"{path}:{n}: video {e.path} not found; event skipped.")
        else:
            out.append(e)
    return out, problems


def read_predictions(path: str | os.PathLike) -> tuple[dict[str, str], Problems]:
    """A LiveSports prediction or baseline caption file: {video_id}_{event_id} -> pred."""
    problems = Problems()
    if not os.path.exists(path):
        raise DataNotFound(f"No predictions at {path}; pass an existing JSONL file.")
    parsed = _read(path, lambda o: (f"{o['video_id']}_{o['event_id']}", str(o.get("pred") or "")), problems)
    return dict(p for _, p in parsed), problems
