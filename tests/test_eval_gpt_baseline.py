"""The GPT-4o-mini baseline generator against a local chat-completions server: frames, prompts, resume."""
import base64
import io
import json

import numpy as np
from PIL import Image

from experiments import eval_inf_streams
from svlm_jax.eval import gpt_baseline
from svlm_jax.eval.prompts import GPT_SYSTEM
from tests.eval_fixtures import ChatServer, write_dataset


def test_jpeg_frames_are_360p():
    url = gpt_baseline.jpeg_data_url(np.zeros((720, 1280, 3), np.uint8))
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (640, 360) and img.format == "JPEG"
    small = Image.open(io.BytesIO(base64.b64decode(gpt_baseline.jpeg_data_url(np.zeros((56, 80, 3), np.uint8))
                                                   .split(",", 1)[1])))
    assert small.size == (80, 56)


def test_baseline_windows_through_the_endpoint(tmp_path, capsys):
    data = write_dataset(tmp_path)
    clips = tmp_path / "clips.jsonl"
    clips.write_text("".join(json.dumps(c) + "\n" for c in [
        {"video": "NBA/g1.mp4", "content": [[0.0, 0.5, "Good"], [7.2, 7.9, "night"]]},   # [0, 7]: frames 0, 4
        {"video": "NHL/g2.mp4", "content": [[1.0, 1.5, "Welcome"], [4.6, 5.3, "saved."]]},  # [1, 5]: frames 1, 5
        {"video": "NHL/gone.mp4", "content": [[1.0, 1.5, "x"], [4.6, 5.3, "y"]]}]))
    server = ChatServer()
    try:
        args = ["gpt-baseline", "--data", data, "--clips", str(clips), "--out", str(tmp_path / "gpt"), "--base-url",
                server.url, "--api-key", "k", "--backoff", "0.01", "--no-progress"]
        assert eval_inf_streams.main(args) == 1  # the missing video's window is dropped and counted
        assert "window_failed=1" in capsys.readouterr().err
        assert len(server.requests) == 2
        req = sorted(server.requests, key=lambda r: r["messages"][1]["content"][0]["text"])
        assert all("temperature" not in r and r["model"] == "gpt-4o-mini" for r in req)
        assert req[0]["messages"][0] == {"role": "system", "content": GPT_SYSTEM}
        user = req[0]["messages"][1]["content"]
        assert user[0] == {"type": "text", "text": "Describe the video.\nTime range: 0.00s ~ 7.00s. Frames sampled at "
                                                    "0.25 fps (capped)."}
        assert [p["type"] for p in user[1:]] == ["image_url", "image_url"]
        merged = [json.loads(x) for x in open(tmp_path / "gpt" / "merged_result.jsonl")]
        assert merged == [
            {"video": "g1.mp4", "chunk_start": 0, "chunk_end": 7, "items": [{"end_time": 7, "response": "a"}]},
            {"video": "g2.mp4", "chunk_start": 1, "chunk_end": 5, "items": [{"end_time": 5, "response": "a"}]}]
        assert eval_inf_streams.main(args) == 1 and len(server.requests) == 2  # answered windows are not asked again
    finally:
        server.close()
