"""The GPT-4o-mini baseline of Inf-Streams-Eval (`generate_gpt.py`, docs/ORIGINAL.md §Inf-Streams-Eval), through any
OpenAI-compatible endpoint.

Per scoring window [s, e]: frames at s, s+4, ... <= e (0.25 FPS, at most 60), frames taller than 360 px
scaled to 360 px high (area resampling), sent as JPEG quality 85 base64 `image_url`s after the user text;
no temperature or max_tokens; 3 tries, and a window that still fails is dropped (counted). Answers are
appended to <out>/windows.jsonl as they come (a rerun asks only the missing windows), and
<out>/merged_result.jsonl gets one line per video with items {end_time: int(e), response}.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import sys
import threading
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from svlm_jax.eval.datasets import Problems, Window, iter_jsonl
from svlm_jax.eval.judges import JudgeError
from svlm_jax.eval.prompts import GPT_SYSTEM, GPT_USER
from svlm_jax.video import VideoError, read_frames

FRAME_STEP_S, MAX_FRAMES, MAX_HEIGHT, JPEG_QUALITY = 4.0, 60, 360, 85


def window_frames(path: str, start: float, end: float) -> list[np.ndarray]:
    """RGB frames uint8 [H, W, 3] at start, start+4, ... <= end (at most 60) of the video at `path`."""
    out = []
    for _, frame in read_frames(path, fps=1 / FRAME_STEP_S, start=start, end=end + 1e-3):
        out.append(frame)
        if len(out) == MAX_FRAMES:
            break
    return out


def jpeg_data_url(frame: np.ndarray) -> str:
    """A frame as a data URL: scaled to 360 px high when taller (area resampling), JPEG quality 85, base64."""
    img = Image.fromarray(frame)
    if img.height > MAX_HEIGHT:
        img = img.resize((max(1, round(img.width * MAX_HEIGHT / img.height)), MAX_HEIGHT), Image.Resampling.BOX)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def messages(frames: Sequence[np.ndarray], start: float, end: float) -> list[dict]:
    """The baseline's chat: the commentator system prompt, then the time range text and the frames."""
    content = [{"type": "text", "text": GPT_USER.format(s=start, e=end)}]
    content += [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in frames]
    return [{"role": "system", "content": GPT_SYSTEM}, {"role": "user", "content": content}]


def generate(windows: Sequence[Window], root: str, client, out_dir: str, *, concurrency: int = 8,
             progress: bool = True) -> tuple[str, Problems]:
    """Describe every window not yet in <out>/windows.jsonl with `client` (an OpenAIJudge without temperature,
    3 tries), then write <out>/merged_result.jsonl. Returns its path and the counted failures."""
    os.makedirs(out_dir, exist_ok=True)
    done_path = os.path.join(out_dir, "windows.jsonl")
    problems, done = Problems(), {}
    if os.path.exists(done_path):
        for _, r in iter_jsonl(done_path, problems):
            done[(r["video"], r["start"], r["end"])] = r
    lock = threading.Lock()

    def one(w: Window):
        path = os.path.join(root, w.video)
        frames = window_frames(path, w.start, w.end)
        reply = client.ask(messages(frames, w.start, w.end))
        rec = {"video": w.key, "start": w.start, "end": w.end, "response": reply}
        with lock, open(done_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return rec

    todo = [w for w in windows if (w.key, w.start, w.end) not in done]
    bar = tqdm(total=len(todo), desc=f"{client.id} windows", disable=not progress or not todo, file=sys.stderr)
    with cf.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, w): w for w in todo}
        for f in cf.as_completed(futures):
            w = futures[f]
            try:
                r = f.result()
                done[(r["video"], r["start"], r["end"])] = r
            except (JudgeError, VideoError, OSError) as e:
                problems.add("window_failed", f"{w.id}: {str(e).rstrip('.')}; dropped (a rerun tries it again).")
            bar.update(1)
    bar.close()
    by_video: dict[str, list[dict]] = {}
    for r in done.values():
        by_video.setdefault(r["video"], []).append(r)
    rows = []
    for video in sorted(by_video):
        rs = sorted(by_video[video], key=lambda r: (r["start"], r["end"]))
        rows.append({"video": video, "chunk_start": min(r["start"] for r in rs), "chunk_end": max(r["end"] for r in rs),
                     "items": [{"end_time": int(r["end"]), "response": r["response"]} for r in rs]})
    merged = os.path.join(out_dir, "merged_result.jsonl")
    tmp = f"{merged}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, merged)
    return merged, problems
