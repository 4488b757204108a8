"""The README's streaming snippet, run as written, prints what the stream CLI prints on the same checkpoint.

The checkpoint records settings that are not the defaults, so the snippet only matches the CLI if it picks
them all up: frames of at most 56x56 pixels on the 1/fps grid at 4 fps with PIL's resize
(preprocessing.json), and top-k / top-p and stop ids (generation_config.json).
"""
import contextlib
import io
import json
import pathlib
import re

import pytest

import svlm_jax
from experiments.forward_demo import write_synthetic
from experiments.stream import main as stream_main
from svlm_jax import ModelConfig
from svlm_jax.checkpoint import Preprocessing, load_preprocessing, save_preprocessing
from svlm_jax.tokenizer import word_level_tokenizer
from tests.model_fixtures import noisy_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ModelConfig.tiny()
PRE = Preprocessing(fps=4, min_pixels=56 * 56, max_pixels=56 * 56, frames="grid", resize="pil")


def readme_streaming_snippet() -> str:
    """The python block of the README's **Streaming** paragraph."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Streaming** (the ten-line API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    tok_json = root / "tokenizer.json"
    word_level_tokenizer(["red", "ball", "goal", "shoots"], CFG).save(str(tok_json))
    gen = root / "generation_config.json"
    gen.write_text(json.dumps({"top_k": 5, "top_p": 0.9, "eos_token_id": [CFG.eos_token_id, CFG.bos_token_id]}))
    ckpt = svlm_jax.save(root / "ckpt", CFG, noisy_params(CFG, seed=3), files=[tok_json, gen])
    save_preprocessing(ckpt, PRE)
    assert load_preprocessing(ckpt) == PRE != Preprocessing()
    return str(ckpt), write_synthetic(str(root / "clip.mp4"), 2.5, rate=8)


def test_readme_snippet_prints_what_the_cli_prints(files, capsys):
    ckpt, video = files
    code = readme_streaming_snippet()
    assert '"ckpt"' in code and '"match.mp4"' in code  # the snippet as a user reads it
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace('"ckpt"', repr(ckpt)).replace('"match.mp4"', repr(video)), {"__name__": "readme"})
    assert stream_main(["--ckpt", ckpt, "--video", video]) == 0
    cli = capsys.readouterr().out
    lines = out.getvalue().splitlines()
    assert lines and all(re.fullmatch(r"\[\d+\.0-\d+\.0s\] .+", x) for x in lines), lines
    assert out.getvalue() == cli


def test_the_snippets_streamer_carries_the_checkpoints_settings(files):
    """Streamer.from_checkpoint holds the checkpoint's preprocessing, sampling and stop ids; st.frames makes
    its frames (flags given there win)."""
    from svlm_jax.stream import SamplingConfig, Streamer

    ckpt, video = files
    st = Streamer.from_checkpoint(ckpt)
    assert st.preprocessing == PRE
    assert st.sampling == SamplingConfig(temperature=0.9, repetition_penalty=1.05, top_k=5, top_p=0.9)
    assert st.stop_ids == (CFG.eos_token_id, CFG.bos_token_id)
    with st.frames(video, end=2) as frames:
        secs = list(frames)
    assert [s.frames.shape for s in secs] == [(4, 28, 56, 3)] * 2 and frames.sampling == "grid"  # 320x224 in 56²
    with st.frames(video, end=1, fps=2, max_pixels=112 * 112, sampling="original") as frames:
        (sec,) = list(frames)
    assert sec.frames.shape[0] == 2 and sec.frames.shape[1] * sec.frames.shape[2] > 56 * 56
