"""From a record or chunk to model inputs: tokens, labels, M-RoPE positions, vision patches, padded batches.

A sample is the original's SFT sample (`LMMDataset` in streaming_vlm/data/lmm_dataset.py), built with the
same `prompt.build_prefix` / `prompt.build_round` the streaming engine uses, under a named template
(`SampleConfig.template`, default "training", the original's; "inference" trains on the streaming
template instead):

    [system][previous text, block truncated to text_sink + text_window tokens][round 0][round 1]...

One JSONL line is one sample, used whole: its clip [video_start, video_end] is read on the original's
2-fps grid (`video.read_clip`), the number of rounds is half the frame count, and round k takes the
words and qa of `record_to_chunk`. Each round is one second: its Time text, its 2 frames as one
temporal grid, and the answer. Labels cover each answer from `im_start + 3` through `<|im_end|>`.
Positions come from `rope.get_rope_index` over the whole sequence.

`collate` pads a list of samples to static shapes: sequence length and vision patches are rounded
up to a short ladder of buckets, so a training run compiles a handful of shapes at most.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.data.chunker import Chunk
from svlm_jax.data.format import Record, RecordError
from svlm_jax.prompt import answer_text, build_prefix, build_round, template, truncate_block
from svlm_jax.rope import get_rope_index
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.vision import vision_metadata

Sample = dict[str, np.ndarray]
Batch = dict[str, np.ndarray]

# Vision keys of a batch: per-sample pixel rows and the index arrays of `vision.vision_metadata`.
VISION_KEYS = ("pixel_values", "window_index", "reverse_index", "rot_pos", "win_idx", "win_valid",
               "full_idx", "full_valid")


class SampleError(ValueError):
    """A chunk that cannot become a sample; `reason` is counted by the pipeline."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How records and chunks become samples (defaults: the original's SFT scripts).

    text_sink/text_window: tokens kept from the start/end of the previous-text block, its 4 header and
    2 footer tokens included (the original's 512/512; 0/0: no truncation). template: "training" or
    "inference" (prompt.TEMPLATES). fps: frames per second (2 frames = one temporal grid per 1-s
    round). min/max_pixels: per-frame bounds; total_pixels: the whole-clip budget spread over its
    frames; max_frames: frames read per clip (480: its first 240 s). resize: "torchvision" (the
    original's antialiased bicubic) or "pil". frames: "original" (the original's pick of the frames
    that end in the clip, `video.read_clip`) or "grid" (the frame shown at start + k/fps, `read_frames`).
    query: text for round 0 under the inference template only (the original's training never uses the
    record's query). max_seq_len: longer samples are skipped.
    """

    text_sink: int = 512
    text_window: int = 512
    fps: int = 2
    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = 24576 * 28 * 28
    max_frames: int = 480
    resize: str = "torchvision"
    frames: str = "original"
    template: str = "training"
    query: str | None = None
    use_record_query: bool = False
    max_seq_len: int = 32768
    time_mode: str = "float"

    def preprocessing(self):
        """The `checkpoint.Preprocessing` of these samples' frames (fps, per-frame pixel bounds, picking, resize):
        what a model trained on them is saved with, so that streaming shows it frames made the same way."""
        from svlm_jax.checkpoint import Preprocessing

        return Preprocessing(fps=self.fps, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                             frames=self.frames, resize=self.resize)


# ------------------------------------------------------------------------------------------ text
def record_to_chunk(rec: Record, num_rounds: int, fps: float = 2.0) -> Chunk:
    """The original's rounds of a whole record (`preprocess_conversation_stream` and
    `get_phrase_before_timestamp` in streaming_vlm/data/lmm_dataset.py).

    Round k spans [start + k, start + k + 1]. Words are consumed in file order: round k takes the
    unused words while start + k + 1 >= their end and stops at the first that fails, so words ending by
    start + 1 (also before start, or at a negative time) land in round 0, and an out-of-order late word
    holds back the words after it. A word's start is never read. Only the first unused qa is checked: it
    is consumed by the round with start < time <= end.
    """
    words, qa = rec.words, list(rec.qa)
    rounds, qas, nxt = [], [], 0
    per = int(fps)
    for k in range(num_rounds):
        t0, t1 = rec.start + (k * per) / fps, rec.start + (k * per + per) / fps
        got = []
        while nxt < len(words) and t1 >= words[nxt][1]:
            got.append(words[nxt][2])
            nxt += 1
        rounds.append(tuple(got))
        if qa and t0 < qa[0][1] <= t1:
            qas.append((qa[0][2], qa[0][3]))
            qa.pop(0)
        else:
            qas.append(("", ""))
    has_qa = any(q or a for q, a in qas)
    return Chunk(video=rec.video, start=rec.start, rounds=tuple(rounds), previous=rec.previous,
                 query=rec.query, qa=tuple(qas) if has_qa else ())


def tokenize_chunk(tok: ChatTokenizer, chunk: Chunk, n_vision: int,
                   cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """ids [T] int32 and label mask [T] bool for a chunk whose rounds carry `n_vision` vision tokens each."""
    tp = template(cfg.template)
    prefix = build_prefix(tok, chunk.previous)
    # The block runs from its <|im_start|> through the newline after its <|im_end|> (at prev_end + 1).
    ids = truncate_block(prefix.ids, prefix.block_start, prefix.prev_end + 1, cfg.text_sink, cfg.text_window)
    mask = [False] * len(ids)
    first_query = (chunk.query if cfg.use_record_query and chunk.query else None) or cfg.query
    for k, words in enumerate(chunk.rounds):
        question, answer = chunk.qa_of(k)
        query = question or (first_query if k == 0 and not tp.merge_header else None)
        t0, t1 = chunk.start + k, chunk.start + (k + 1)
        rnd = build_round(tok, t0, t1, n_vision, query=query or None, index=k, tmpl=tp,
                          answer=answer_text(words, tmpl=tp, answer=answer))
        ids += rnd.ids
        mask += rnd.label_mask
    return np.asarray(ids, np.int32), np.asarray(mask, bool)


# ------------------------------------------------------------------------------------------ vision
def frame_size(height: int, width: int, n_frames: int, cfg: SampleConfig) -> tuple[int, int]:
    """The (h, w) every frame of a clip of n frames is resized to: the original's whole-clip budget."""
    from svlm_jax.video import clip_max_pixels, smart_resize

    cap = clip_max_pixels(n_frames, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                          total_pixels=cfg.total_pixels)
    return smart_resize(height, width, 28, cfg.min_pixels, cap)


def load_vision(video: str, start: float, end: float, cfg: SampleConfig,
                num_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Read the clip [start, end] as the original and patchify each round: (pixel_values [R*P, 1176], grid [1, 3], R).

    R = half the picked frames, or `num_rounds` (the frames are cut, or padded with the last, to fit).
    Raises SampleError when the video cannot be read.
    """
    from svlm_jax.video import VideoError, patchify_video, read_clip, read_frames, resize_with

    if cfg.frames not in ("original", "grid"):
        raise ValueError(f"SampleConfig.frames must be 'original' or 'grid', got {cfg.frames!r}.")
    try:
        if cfg.frames == "original":
            frames, _ = read_clip(video, start, end, fps=cfg.fps, max_frames=cfg.max_frames)
        else:
            n = int(round((end - start) * cfg.fps)) if num_rounds is None else num_rounds * cfg.fps
            frames = [f for _, f in read_frames(video, fps=cfg.fps, start=start, end=start + n / cfg.fps)]
            first = frames[0].shape[:2]
            frames = np.stack([f if f.shape[:2] == first else resize_with(cfg.resize)(f[None], *first)[0]
                               for f in frames])
            frames = np.concatenate([frames] + [frames[-1:]] * (len(frames) % 2))
    except VideoError as e:
        raise SampleError("unreadable_video", str(e)) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure makes this one sample unusable
        raise SampleError("unreadable_video", f"Decoding {video!r} failed: {e}") from e
    fps = cfg.fps
    if num_rounds is not None:
        want = num_rounds * fps
        if len(frames) < want - fps:
            raise SampleError("short_video", f"{video!r} has {len(frames)} frames in [{start}, {end}] s at {fps} "
                                             f"fps, expected {want}")
        frames = np.concatenate([frames[:want]] + [frames[-1:]] * max(0, want - len(frames)))
    rounds = len(frames) // fps
    h, w = frame_size(frames.shape[1], frames.shape[2], len(frames), cfg)
    video_arr = resize_with(cfg.resize)(frames, h, w)
    rows, grid = [], None
    for k in range(rounds):
        px, grid = patchify_video(video_arr[k * fps:(k + 1) * fps])
        rows.append(px)
    return np.concatenate(rows), grid, rounds


def build_sample(item, tok: ChatTokenizer, model_cfg: ModelConfig, cfg: SampleConfig,
                 vision: tuple[np.ndarray, np.ndarray] | None = None) -> Sample:
    """One sample from a Record (used whole, as the original), a mix.LineRef, or a Chunk.

    Returns ids/label_mask [T], positions [3, T], pixel_values [N, 1176], grids [R, 3].
    `vision` = (pixel_values, per-round grid) skips decoding (tests, cached frames); a Record then has
    as many rounds as the pixels hold.
    """
    if hasattr(item, "load") and not isinstance(item, (Record, Chunk)):
        try:
            item = item.load()
        except RecordError as e:
            raise SampleError(e.reason, str(e)) from e
        except OSError as e:
            raise SampleError("unreadable_line", str(e)) from e
    merge = model_cfg.vision.merge_unit
    if vision is None:
        if isinstance(item, Record):
            pixels, grid, rounds = load_vision(item.video, item.start, item.end, cfg)
        else:
            pixels, grid, rounds = load_vision(item.video, item.start, item.end, cfg, item.num_rounds)
    else:
        pixels, grid = vision
        rounds = pixels.shape[0] // int(np.prod(np.asarray(grid)))
    grid = np.asarray(grid, np.int64).reshape(3)
    chunk = record_to_chunk(item, rounds, cfg.fps) if isinstance(item, Record) else item
    n_vision = int(np.prod(grid)) // merge
    ids, mask = tokenize_chunk(tok, chunk, n_vision, cfg)
    if ids.size > cfg.max_seq_len:
        raise SampleError("too_long", f"sample at {chunk.start} s of {chunk.video!r} has {ids.size} tokens, "
                                      f"above max_seq_len {cfg.max_seq_len}")
    grids = np.tile(grid[None], (chunk.num_rounds, 1))
    spg = [model_cfg.vision.temporal_patch_size / cfg.fps] * chunk.num_rounds
    pos, _ = get_rope_index(model_cfg, ids[None], video_grid_thw=grids, second_per_grid_ts=spg,
                            time_mode=cfg.time_mode)
    return {"input_ids": ids, "label_mask": mask, "positions": pos[:, 0], "pixel_values": pixels,
            "grids": grids}


# ------------------------------------------------------------------------------------------ batching
def geometric_buckets(minimum: int, maximum: int, multiple: int = 1) -> tuple[int, ...]:
    """minimum * {1, 1.5} * 2^k, rounded up to `multiple`, up to the first value >= maximum."""
    out, v = [], minimum
    while True:
        for x in (v, v * 3 // 2):
            x = -(-x // multiple) * multiple
            if not out or x > out[-1]:
                out.append(x)
            if x >= maximum:
                return tuple(out)
        v *= 2


def bucket(n: int, ladder: Sequence[int], what: str) -> int:
    """The smallest bucket >= n."""
    for b in ladder:
        if b >= n:
            return b
    raise ValueError(f"{what} of {n} exceeds the largest bucket {ladder[-1]}; raise the limit or shorten chunks.")


@dataclasses.dataclass(frozen=True)
class BatchShapes:
    """The bucket ladders that fix a batch's static shapes."""

    seq: tuple[int, ...] = geometric_buckets(256, 32768, 64)
    patches: tuple[int, ...] = geometric_buckets(64, 1 << 20, 64)
    segments: tuple[int, ...] = geometric_buckets(8, 1 << 16)
    segment_len: tuple[int, ...] = geometric_buckets(64, 1 << 16, 64)


_PAD_ITEM_MERGED = 16  # merged units per padding item: one 4x4 window, so padding never builds long segments


def _pad_grids(n_patches: int, target: int, merge: int) -> list[list[int]]:
    """Grids of padding items (1, merge, merge*k) that fill target - n_patches patches."""
    unit = merge * merge
    rest = (target - n_patches) // unit
    out = []
    while rest > 0:
        k = min(rest, _PAD_ITEM_MERGED)
        out.append([1, merge, merge * k])
        rest -= k
    return out


def _pad_rows(a: np.ndarray, rows: int, cols: int, fill) -> np.ndarray:
    out = np.full((rows, cols) + a.shape[2:], fill, a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def collate(samples: Sequence[Sample], batch_size: int, model_cfg: ModelConfig, *, pad_id: int,
            shapes: BatchShapes = BatchShapes(), pixel_dtype=np.float32) -> Batch:
    """Pad samples to one static-shape batch of `batch_size` rows (missing rows are all padding).

    Text: input_ids/targets [B, T] int32, loss_mask [B, T] float32 (1 where targets[t] = ids[t+1] is a
    label), attention_mask [B, T] int32, positions [B, 3, T] float32. Vision, per row: pixel_values
    [B, N, 1176] and the tower's index arrays; each row's vision is its rounds' grids followed by
    padding items of zeros, whose features are never spliced in.
    """
    if not 0 < len(samples) <= batch_size:
        raise ValueError(f"collate needs 1..{batch_size} samples, got {len(samples)}.")
    vc = model_cfg.vision
    merge, unit = vc.spatial_merge_size, vc.merge_unit
    t_max = max(s["input_ids"].size for s in samples)
    t_b = bucket(t_max + 1, shapes.seq, "sequence length")  # +1: every labelled token needs a next slot
    n_max = max(s["pixel_values"].shape[0] for s in samples)
    n_b = bucket(n_max, shapes.patches, "vision patches")
    b = batch_size
    ids = np.full((b, t_b), pad_id, np.int32)
    lmask = np.zeros((b, t_b), np.float32)
    amask = np.zeros((b, t_b), np.int32)
    pos = np.zeros((b, 3, t_b), np.float32)
    pixels = np.zeros((b, n_b, vc.patch_dim), pixel_dtype)
    metas = []
    for i in range(b):
        if i < len(samples):
            s = samples[i]
            t = s["input_ids"].size
            ids[i, :t] = s["input_ids"]
            lmask[i, :t] = s["label_mask"]
            amask[i, :t] = 1
            pos[i, :, :t] = s["positions"]
            n = s["pixel_values"].shape[0]
            pixels[i, :n] = s["pixel_values"]
            grids = [list(map(int, g)) for g in s["grids"]]
        else:
            n, grids = 0, []
        metas.append(vision_metadata(np.asarray(grids + _pad_grids(n, n_b, merge), np.int64).reshape(-1, 3), vc))
    # Label at t is the token at t+1: shift the mask and the ids left by one.
    targets = np.concatenate([ids[:, 1:], np.full((b, 1), pad_id, np.int32)], axis=1)
    loss_mask = np.concatenate([lmask[:, 1:], np.zeros((b, 1), np.float32)], axis=1)
    s_w = bucket(max(m["win_idx"].shape[0] for m in metas), shapes.segments, "vision windows")
    s_f = bucket(max(m["full_idx"].shape[0] for m in metas), shapes.segments, "vision frames")
    l_f = bucket(max(m["full_idx"].shape[1] for m in metas), shapes.segment_len, "vision frame length")
    l_w = metas[0]["win_idx"].shape[1]
    out: Batch = {"input_ids": ids, "targets": targets, "loss_mask": loss_mask, "attention_mask": amask,
                  "positions": pos, "pixel_values": pixels}
    out["window_index"] = np.stack([m["window_index"] for m in metas])  # [B, N/4]
    out["reverse_index"] = np.stack([m["reverse_index"] for m in metas])  # [B, N/4]
    out["rot_pos"] = np.stack([m["rot_pos"] for m in metas])  # [B, N, 2]
    # Padded segment slots point past the last patch (index N) and are dropped by the tower's scatter.
    out["win_idx"] = np.stack([_pad_rows(m["win_idx"], s_w, l_w, n_b) for m in metas])  # [B, Sw, Lw]
    out["win_valid"] = np.stack([_pad_rows(m["win_valid"], s_w, l_w, False) for m in metas])
    out["full_idx"] = np.stack([_pad_rows(m["full_idx"], s_f, l_f, n_b) for m in metas])  # [B, Sf, Lf]
    out["full_valid"] = np.stack([_pad_rows(m["full_valid"], s_f, l_f, False) for m in metas])
    return out


def batch_shape_key(batch: Batch) -> tuple[Any, ...]:
    """The static shapes a batch compiles to (for logging how many distinct compiles a run needs)."""
    return tuple((k, v.shape) for k, v in sorted(batch.items()))


def count_label_tokens(batch: Batch) -> int:
    """Number of labelled tokens in a batch."""
    return int(batch["loss_mask"].sum())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def vision_tokens_per_second(height: int, width: int, cfg: SampleConfig, chunk_seconds: int) -> int:
    """Merged vision tokens per 1-s round for frames of height x width in a clip of `chunk_seconds`."""
    h, w = frame_size(height, width, chunk_seconds * cfg.fps, cfg)
    return (h // 28) * (w // 28) * _ceil_div(cfg.fps, 2)
