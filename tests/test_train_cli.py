"""experiments/train.py end to end on a small synthetic set: train, export, resume, refusals, stream eval."""
import argparse
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import svlm_jax
from experiments import train as train_cli
from svlm_jax.data import synthetic
from svlm_jax.data.chunker import ChunkConfig
from svlm_jax.tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    spec = synthetic.SyntheticSpec(train_videos=2, val_videos=1, video_seconds=24, stream_seconds=12, seed=3)
    chunks = ChunkConfig(window=8, overlap=4, min_words_per_second=0.0)
    return synthetic.write_dataset(root, spec, train_cli.demo_model_config(), chunk=chunks)


def _argv(paths, out, **over):
    flags = dict(data=paths["train_chunks"], val_data=paths["val_chunks"], tokenizer=paths["tokenizer"],
                 preset="tiny", text_sink=32, text_window=32, min_pixels=56 * 56, max_pixels=56 * 56,
                 max_seq_len=1024, steps=4, batch_size=2, accum=1, lr=1e-3, warmup_ratio=0.25, freeze="none",
                 dtype="float32", workers=0, save_every=2, eval_every=2, eval_batches=1, out=out)
    flags.update(over)
    argv = [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return argv + ["--no-progress"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["step"] for r in rows if "loss" in r and "eval_loss" not in r]


@pytest.mark.slow
def test_train_exports_resumes_and_refuses_other_flags(small_set, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_cli.main(_argv(small_set, out)) == 0
    assert _steps(out) == [1, 2, 3, 4]
    assert sorted(os.listdir(os.path.join(out, "checkpoints")), key=int)[-1] == "4"
    assert os.path.getsize(os.path.join(out, "loss.png")) > 0
    cfg, params = svlm_jax.load(os.path.join(out, "model"))
    assert cfg.text.vocab_size == svlm_jax.ModelConfig.tiny().text.vocab_size
    assert os.path.exists(os.path.join(out, "model", "tokenizer.json"))
    capsys.readouterr()

    # The same command again finds the final checkpoint and trains no further step.
    assert train_cli.main(_argv(small_set, out)) == 0
    assert "Resuming from the checkpoint of step 4" in capsys.readouterr().out
    assert _steps(out) == [1, 2, 3, 4]
    _, again = svlm_jax.load(os.path.join(out, "model"))
    jax.tree.map(np.testing.assert_array_equal, params, again)  # restored from the step-4 checkpoint

    # Other hyperparameters under the same --out are refused with one sentence naming the difference.
    assert train_cli.main(_argv(small_set, out, lr=2e-3)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr: 0.001 -> 0.002" in err, err


def test_init_without_data_is_refused(capsys):
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--init", "ckpt"])
    assert "--init needs --data" in capsys.readouterr().err


def test_reference_defaults_apply_with_data_and_demo_defaults_without(capsys):
    ref = train_cli.parse_args(["--data", "a.jsonl:2", "--data", "b.jsonl"])
    assert (ref.window, ref.text_sink, ref.lr, ref.freeze) == (None, 512, 1e-5, "visual")  # lines used whole
    assert (ref.template, ref.frames, ref.resize) == ("training", "original", "torchvision")
    assert ref.data == ["a.jsonl:2", "b.jsonl"]
    demo = train_cli.parse_args([])
    assert demo.demo and demo.preset == "tiny" and demo.template == "inference"
    assert train_cli.parse_args(["--data", "x.jsonl", "--window", "16", "--overlap", "8"]).window == 16
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--data", "x.jsonl", "--window", "16"])
    assert "--window and --overlap go together" in capsys.readouterr().err


@pytest.mark.slow
def test_stream_eval_scores_the_held_out_stream(small_set, tmp_path):
    cfg = train_cli.demo_model_config()
    params = svlm_jax.init_params(cfg, jax.random.key(0))
    tok = ChatTokenizer.from_dir(small_set["tokenizer"])
    args = argparse.Namespace(window=None, text_sink=32, text_window=32, fps=2, min_pixels=56 * 56,
                              max_pixels=56 * 56, out=str(tmp_path))
    lines = []
    score = train_cli.stream_eval(cfg, params, tok, small_set, args, lines.append)
    assert score["stream_seconds"] == 12
    events = synthetic.load_events(small_set["stream_events"])
    assert score["events_per_min"] == pytest.approx(len([e for e in events if e.round < 12]) / 12 * 60)
    assert 0.0 <= score["recall"] <= 1.0
    with open(tmp_path / "stream_eval.jsonl") as f:
        assert [json.loads(line)["t0"] for line in f] == [float(t) for t in range(12)]
    assert any("truth:" in line for line in lines)
    assert (tmp_path / "stream_eval.vtt").read_text().startswith("WEBVTT\n\n")


@pytest.mark.slow
def test_fine_tune_from_init_on_a_two_device_fsdp_mesh(small_set, tmp_path):
    """The reference path: --init checkpoint (its tokenizer), frozen vision, bf16, accumulation, fsdp=2."""
    cfg = train_cli.demo_model_config()
    init = str(tmp_path / "init")
    params = svlm_jax.init_params(cfg, jax.random.key(1))
    svlm_jax.save(init, cfg, params, files=[small_set["tokenizer"]])
    out = str(tmp_path / "run")
    # Also the explicit re-chunking of whole-video lines (--window/--overlap).
    argv = _argv(small_set, out, steps=2, accum=2, dtype="bfloat16", freeze="visual", fsdp=2, data=small_set["train"],
                 val_data=small_set["val"], window=8, overlap=4, min_words_per_second=0)
    drop = argv.index("--tokenizer")
    argv = argv[:drop] + argv[drop + 2:] + ["--init", init]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 device(s), mesh data=1 fsdp=2" in proc.stdout
    assert _steps(out) == [1, 2]
    _, tuned = svlm_jax.load(os.path.join(out, "model"))
    jax.tree.map(np.testing.assert_array_equal, params["visual"], tuned["visual"])
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params["text"], tuned["text"])
    assert all(jax.tree.leaves(moved))
