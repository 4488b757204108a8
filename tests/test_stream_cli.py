"""The streaming CLI: a real (synthetic) video end to end, WebVTT/JSONL output, and one-line errors."""
import io
import json
import os

import pytest

import svlm_jax
from experiments.forward_demo import write_synthetic
from experiments.stream import Outputs, main, original_vtt_time, run, vtt_time
from svlm_jax import ModelConfig
from svlm_jax.cache import StreamConfig
from svlm_jax.stream import Comment, SamplingConfig, Streamer, synthetic_seconds
from svlm_jax.tokenizer import ChatTokenizer, word_level_tokenizer
from tests.model_fixtures import random_params

CFG = ModelConfig.tiny()
SMALL = ["--greedy", "--max-new-tokens", "4", "--vision-window", "2", "--text-sink", "8", "--text-window", "8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_cli")
    tok_json = root / "tokenizer.json"
    word_level_tokenizer(["red", "ball"], CFG).save(str(tok_json))
    ckpt = svlm_jax.save(root / "ckpt", CFG, random_params(CFG), files=[tok_json])
    video = write_synthetic(str(root / "clip.mp4"), 2.5, rate=8)
    data = open(video, "rb").read()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is not a video\n")
    return root, str(ckpt), video


def _one_error_line(capsys, match):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and match in err, err
    return err


def test_video_to_jsonl_and_vtt(files, capsys):
    root, ckpt, video = files
    vtt = root / "out.vtt"
    assert main(["--ckpt", ckpt, "--video", video, "--jsonl", "--vtt", str(vtt)] + SMALL) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # 2.5 s of video: three seconds, the last one ended mid-second and is still reported.
    assert [(x["t0"], x["t1"]) for x in lines] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert {"text", "vision_ms", "prefill_ms", "decode_ms"} <= set(lines[0])
    assert vtt.read_text().startswith("WEBVTT\n\n")


@pytest.mark.parametrize("name,match", [("missing.mp4", "not found"), ("empty.mp4", "empty (0 bytes)"),
                                        ("truncated.mp4", "truncated"), ("notes.mp4", "not a video")])
def test_bad_video_files_are_one_line(files, capsys, name, match):
    root, ckpt, _ = files
    assert main(["--ckpt", ckpt, "--video", str(root / name)]) == 2
    _one_error_line(capsys, match)


def test_unreachable_url_is_one_line(files, capsys):
    _, ckpt, _ = files
    assert main(["--ckpt", ckpt, "--video", "rtsp://127.0.0.1:9/none", "--timeout", "2"]) == 2
    _one_error_line(capsys, "Could not open stream")


def test_bad_checkpoints_are_one_line(files, tmp_path, capsys):
    _, ckpt, video = files
    assert main(["--ckpt", str(tmp_path / "nope"), "--video", video]) == 2
    _one_error_line(capsys, "No svlm-jax checkpoint")
    import shutil

    from tokenizers import Tokenizer, models
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(bare / "tokenizer.json"))
    assert main(["--ckpt", str(bare), "--video", video]) == 2
    _one_error_line(capsys, "lacks the special token")


def test_config_too_small_for_the_prompt_is_one_line(files, capsys):
    _, ckpt, video = files
    assert main(["--ckpt", ckpt, "--video", video, "--query", "red ball red ball", "--query-tokens", "2"]) == 2
    _one_error_line(capsys, "query_tokens")


def test_interrupt_flushes_what_was_said(tmp_path, capsys):
    tok = ChatTokenizer.from_tokenizer(word_level_tokenizer(["red", "ball"], CFG))
    scfg = StreamConfig(vision_window=2, text_sink=4, text_window=4, max_new_tokens=3, vision_tokens=4,
                        round_tokens=32, prefix_tokens=24, query_tokens=8)
    st = Streamer(CFG, random_params(CFG), tok, scfg, sampling=SamplingConfig(greedy=True))

    def seconds():
        yield from synthetic_seconds(CFG, seconds=2)
        raise KeyboardInterrupt

    out, vtt = io.StringIO(), tmp_path / "cut.vtt"
    assert run(st, seconds(), Outputs(jsonl=True, vtt_path=str(vtt), out=out)) == 130
    assert len(out.getvalue().splitlines()) == 2
    assert vtt.read_text().startswith("WEBVTT") and "interrupted after 2 s" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "other.vtt")


def test_vtt_time():
    assert vtt_time(3725.5) == "01:02:05.500" and vtt_time(0) == "00:00:00.000"


def test_generation_config_sets_top_k_and_stops(files, tmp_path, capsys):
    """A checkpoint whose generation_config.json says top_k=1 streams what --greedy streams."""
    root, ckpt, video = files
    gen = tmp_path / "generation_config.json"
    gen.write_text(json.dumps({"top_k": 1, "top_p": 0.001, "eos_token_id": [1005, 1004]}))
    stock = svlm_jax.save(tmp_path / "ckpt", CFG, random_params(CFG), files=[root / "tokenizer.json", gen])
    sampled = [x for x in SMALL if x != "--greedy"]

    def texts(path, flags):
        assert main(["--ckpt", str(path), "--video", video, "--jsonl"] + flags) == 0
        return [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()]

    greedy = texts(ckpt, SMALL)
    assert texts(stock, sampled) == greedy
    assert texts(ckpt, sampled + ["--top-k", "0", "--seed", "1"]) != greedy  # sampling really samples


def test_ask_a_question_mid_stream(files, capsys):
    """--ask T:question goes into the second holding T; its answer comes back with that second, then commentary
    goes on; a malformed --ask is refused by the parser."""
    _, ckpt, video = files
    assert main(["--ckpt", ckpt, "--video", video, "--jsonl", "--ask", "1.5:red ball"] + SMALL) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("question") for x in lines] == [None, "red ball", None]
    assert isinstance(lines[1]["answer"], str) and "answer" not in lines[2]
    assert main(["--ckpt", ckpt, "--video", video, "--ask", "0:red"] + SMALL) == 0
    assert capsys.readouterr().out.startswith("[0.0-1.0s] Q: red A: ")
    with pytest.raises(SystemExit):
        main(["--ckpt", ckpt, "--video", video, "--ask", "soon:red"])


# ------------------------------------------------------------------------------------------ --format original
DATA = os.path.join(os.path.dirname(__file__), "data")


def test_original_format_is_byte_exact(qwen_tok, tmp_path):
    """VTT cues and JSON lines equal hand-written files in the original's format (docs/ORIGINAL.md §Outputs): " Infer Time"
    line, full response with " ...", a cue for every second (silent ones too), truncated milliseconds, the
    JSON keys, response[:-4] even where it cuts real words, non-ASCII kept."""
    turns = [(0.0, 1.0, " Curry brings it up ...", (12.0, 30.0, 101.0)),
             (1.0, 2.0, " ...", (10.0, 20.0, 20.0)),
             (12.3459, 13.3459, " and the crowd goes wild", (250.0, 500.0, 500.0)),  # a 20-token cap: no " ..."
             (3601.5, 3602.5, " Warriors’ lead ...", (50.0, 25.0, 25.0))]
    out, vtt = io.StringIO(), tmp_path / "out.vtt"
    outputs = Outputs(jsonl=True, vtt_path=str(vtt), out=out, fmt="original", decode=qwen_tok.decode)
    for i, (t0, t1, text, (v, p, d)) in enumerate(turns):
        ids = qwen_tok.encode(text)
        outputs.write(Comment(stream=0, index=i, t0=t0, t1=t1, text=text.removesuffix(" ...").strip(),
                              tokens=tuple(ids), vision_ms=v, prefill_ms=p, decode_ms=d, n_tokens=len(ids)))
    outputs.close()
    with open(os.path.join(DATA, "stream_original.vtt"), "rb") as f:
        assert vtt.read_bytes() == f.read()
    with open(os.path.join(DATA, "stream_original.jsonl"), "rb") as f:
        assert out.getvalue().encode() == f.read()
    assert original_vtt_time(2.9996) == "00:00:02.999" and vtt_time(2.9996) == "00:00:03.000"


def test_original_format_end_to_end(files, capsys):
    """The CLI with --format original, a duration cap and two-second rounds: one segment per round."""
    root, ckpt, video = files
    vtt = root / "orig.vtt"
    argv = ["--ckpt", ckpt, "--video", video, "--jsonl", "--vtt", str(vtt), "--format", "original",
            "--duration", "2", "--chunk-duration", "2"] + SMALL
    assert main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["type"], x["start"], x["end"]) for x in lines] == [("segment", 0.0, 2.0)]
    cues = vtt.read_text().split("\n\n")
    assert cues[0] == "WEBVTT" and cues[1].startswith("00:00:00.000 --> 00:00:02.000\n Infer Time: ")
