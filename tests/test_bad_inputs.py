"""Bad and edge inputs through the real entry points: one clear line, exit code 2, no input file changed.

Each CLI case runs the CLI's `main` (what `python -m` runs) and asserts its exit code, a one-line
stderr and that every input file is byte-identical afterwards; the cases that depend on the process
itself (exit status of `python -m`, signals, a closed stdout pipe) run as subprocesses. All cases
share one tiny checkpoint, one HF directory and a few short videos built once for the module.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import svlm_jax
from converters import hf_to_jax, jax_to_hf, safetensors_io
from experiments import stream as stream_cli
from experiments import train as train_cli
from experiments.forward_demo import write_synthetic
from svlm_jax import ModelConfig
from svlm_jax.checkpoint import Preprocessing, save_preprocessing
from svlm_jax.data.format import read_jsonl, record_to_json
from svlm_jax.errors import CheckpointError, ConfigError, VideoError, check_output
from svlm_jax.stream import Comment
from svlm_jax.tokenizer import word_level_tokenizer
from svlm_jax.video import write_mp4
from tests.model_fixtures import random_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ModelConfig.tiny()
# Small per-second work: a 56x56 frame budget, 4 new tokens, a short window.
FAST = ["--greedy", "--max-new-tokens", "4", "--vision-window", "2", "--text-sink", "8", "--text-window", "8",
        "--min-pixels", "3136", "--max-pixels", "3136"]


def _faststart_mp4(path, seconds: float, rate: int = 8, size: int = 64) -> str:
    """An mp4 with its index at the front (faststart), noise frames so every frame has real data."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=rate)
        s.height = s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(int(seconds * rate)):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, rate)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tok = root / "tokenizer.json"
    word_level_tokenizer(["red", "ball"], CFG).save(str(tok))
    params = random_params(CFG)
    ckpt = svlm_jax.save(root / "ckpt", CFG, params, files=[tok])
    video = write_synthetic(str(root / "clip.mp4"), 2.5, rate=8, h=64, w=64)
    full = _faststart_mp4(root / "fast.mp4", 4.0)
    data = pathlib.Path(full).read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    write_mp4(root / "tiny.mp4", [np.zeros((2, 2, 3), np.uint8)] * 4, 2)
    jax_to_hf.convert(ckpt, root / "hf", progress=False)
    return {"root": root, "ckpt": str(ckpt), "video": video, "cut": str(root / "cut.mp4"), "tok": str(tok),
            "tiny": str(root / "tiny.mp4"), "hf": str(root / "hf"), "params": params}


def _digest(paths) -> dict[str, str]:
    """sha256 of every file under the given files and directories."""
    out = {}
    for p in map(pathlib.Path, paths):
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _one_line(err: str, *needles: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _cli(capsys, main, argv, inputs, code=2, needles=()):
    """Run a CLI main; assert its exit code, a one-line stderr holding `needles`, and unchanged inputs."""
    before = _digest(inputs)
    capsys.readouterr()
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert _digest(inputs) == before
    if code == 2:
        _one_line(err, *needles)
    return out, err


def _copy_ckpt(world, tmp_path, name="c"):
    return pathlib.Path(shutil.copytree(world["ckpt"], tmp_path / name))


# ------------------------------------------------------------------------------- stream CLI, in process
def test_vtt_over_an_input_is_refused(world, capsys):
    ins = [world["video"], world["ckpt"]]
    for target in (world["video"], os.path.join(world["ckpt"], "subs.vtt")):
        _cli(capsys, stream_cli.main, ["--ckpt", world["ckpt"], "--video", world["video"], "--vtt", target] + FAST,
             ins, needles=("--vtt",))


def test_truncated_faststart_mp4_is_reported_after_what_was_said(world, tmp_path, capsys):
    vtt = tmp_path / "cut.vtt"
    out, err = _cli(capsys, stream_cli.main, ["--ckpt", world["ckpt"], "--video", world["cut"], "--jsonl",
                                              "--vtt", str(vtt)] + FAST, [world["cut"], world["ckpt"]],
                    needles=("truncated", "streamed and flushed"))
    assert len(out.splitlines()) >= 1  # the seconds before the cut came out first
    assert vtt.read_text().startswith("WEBVTT")


@pytest.mark.parametrize("flags,needle", [(["--end", "nan"], "finite"), (["--start", "inf"], "finite"),
                                          (["--max-new-tokens", "1000000000"], "GiB free")])
def test_impossible_times_and_sizes(world, capsys, flags, needle):
    _cli(capsys, stream_cli.main, ["--ckpt", world["ckpt"], "--video", world["video"]] + FAST + flags,
         [world["video"]], needles=(needle,))


def test_a_2x2_video_is_one_line(world, capsys):
    _cli(capsys, stream_cli.main, ["--ckpt", world["ckpt"], "--video", world["tiny"]] + FAST, [world["tiny"]],
         needles=("too small",))


def test_relative_checkpoint_path_streams(world, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])
    out, _ = _cli(capsys, stream_cli.main, ["--ckpt", "ckpt", "--video", "clip.mp4", "--jsonl"] + FAST,
                  [world["ckpt"]], code=0)
    assert len(out.splitlines()) == 3
    cfg, _ = svlm_jax.load("ckpt")
    assert cfg == CFG


def _break(ckpt: pathlib.Path, how: str) -> str:
    """Damage a copy of the checkpoint; returns what the error must name."""
    if how == "tokenizer":
        f = ckpt / "tokenizer.json"
        f.write_bytes(f.read_bytes()[:100])
        return "tokenizer.json"
    if how == "config":
        f = ckpt / "svlm_config.json"
        f.write_bytes(f.read_bytes()[:50])
        return "svlm_config.json"
    if how == "manifest":
        (ckpt / "params" / "state" / "manifest.ocdbt").unlink()
        return "damaged"
    if how == "data":
        next(p for p in (ckpt / "params").rglob("*") if p.parent.name == "d" and p.is_file()).unlink()
        return "damaged"
    if how == "file":
        shutil.rmtree(ckpt)
        ckpt.write_text("not a checkpoint")
        return "is a file"
    if how == "missing":
        shutil.rmtree(ckpt)
        return "does not exist"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["tokenizer", "config", "manifest", "data", "file", "missing"])
def test_damaged_checkpoints_are_one_line(world, tmp_path, capsys, how):
    ckpt = _copy_ckpt(world, tmp_path)
    needle = _break(ckpt, how)
    _cli(capsys, stream_cli.main, ["--ckpt", str(ckpt), "--video", world["video"]] + FAST,
         [world["video"], ckpt], needles=(needle,))


def test_checkpoint_preprocessing_is_the_default_and_flags_override_it(world, tmp_path, capsys):
    ckpt = _copy_ckpt(world, tmp_path)
    save_preprocessing(ckpt, Preprocessing(fps=2, min_pixels=5000, max_pixels=3136))  # unusable on purpose
    base = ["--ckpt", str(ckpt), "--video", world["video"], "--jsonl", "--greedy", "--max-new-tokens", "4",
            "--vision-window", "2", "--text-sink", "8", "--text-window", "8"]
    _cli(capsys, stream_cli.main, base, [ckpt], needles=("min_pixels 5000 exceeds max_pixels 3136",))
    out, _ = _cli(capsys, stream_cli.main, base + ["--min-pixels", "3136"], [ckpt], code=0)
    assert len(out.splitlines()) == 3


# ------------------------------------------------------------------------------- converters, in process
def test_converters_never_write_over_their_source(world, capsys):
    hf, ckpt = world["hf"], world["ckpt"]
    for main, src in ((hf_to_jax.main, hf), (jax_to_hf.main, ckpt)):
        for dst in (src, os.path.join(src, "inside"), os.path.dirname(src)):
            _cli(capsys, main, [src, dst, "--overwrite", "--no-progress"], [src], needles=("DST",))


def test_non_qwen_config_is_one_line(world, tmp_path, capsys):
    src = pathlib.Path(shutil.copytree(world["hf"], tmp_path / "llama"))
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    _cli(capsys, hf_to_jax.main, [str(src), str(tmp_path / "out"), "--no-progress"], [src], needles=("'llama'",))
    assert not (tmp_path / "out").exists()


def test_truncated_bin_is_one_line(world, tmp_path, capsys):
    torch = pytest.importorskip("torch")

    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy(pathlib.Path(world["hf"]) / "config.json", src)
    state = {k: torch.from_numpy(v.copy())
             for k, v in safetensors_io.iter_tensors(pathlib.Path(world["hf"]) / "model.safetensors")}
    torch.save(state, src / "pytorch_model.bin")
    blob = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(blob[: len(blob) // 2])
    _cli(capsys, hf_to_jax.main, [str(src), str(tmp_path / "out"), "--no-progress"], [src],
         needles=("pytorch_model.bin", "truncated"))


def test_int32_and_nan_tensors_warn_naming_the_tensor(world, tmp_path, capsys):
    src = pathlib.Path(shutil.copytree(world["hf"], tmp_path / "odd"))
    state = dict(safetensors_io.iter_tensors(src / "model.safetensors"))
    state["model.norm.weight"] = state["model.norm.weight"].astype(np.int32)
    state["model.embed_tokens.weight"][3, 4] = np.nan
    safetensors_io.write_file(src / "model.safetensors", state)
    _, err = _cli(capsys, hf_to_jax.main, [str(src), str(tmp_path / "out"), "--no-progress"], [src], code=0)
    lines = err.strip().splitlines()
    assert any("'model.norm.weight'" in x and "int32" in x for x in lines), err
    assert any("'model.embed_tokens.weight'" in x and "NaN" in x for x in lines), err
    with pytest.warns(UserWarning, match="NaN or inf, first 'text/embed_tokens/embedding'"):
        svlm_jax.load(tmp_path / "out")


# ------------------------------------------------------------------------------- train CLI, in process
def _train(world, out, **flags):
    argv = ["--data", world["tok"], "--tokenizer", world["tok"], "--preset", "tiny", "--out", str(out),
            "--no-progress"]
    for k, v in flags.items():
        argv = [a for a in argv if a != f"--{k}"] if v is None else argv + [f"--{k}", str(v)]
    return argv


def test_train_refuses_bad_inputs_before_writing_anything(world, tmp_path, capsys):
    ins = [world["tok"], world["ckpt"]]
    cases = [(dict(data=tmp_path / "typo.jsonl"), "typo.jsonl"), (dict(freeze="nosuchlayer"), "text/layers_N"),
             (dict(init=tmp_path / "nockpt"), "does not exist"), (dict(out=world["tok"]), "is a file")]
    for flags, needle in cases:
        out = flags.pop("out", tmp_path / "run")
        argv = _train(world, out, **flags)
        _cli(capsys, train_cli.main, argv, ins, needles=(needle,))
        assert not (tmp_path / "run" / "run.json").exists()  # the corrected command is not refused later
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "run.json").write_text('{"lr": 0.1')
    _cli(capsys, train_cli.main, _train(world, run), ins + [run / "run.json"], needles=("run.json",))
    model = tmp_path / "exported"
    shutil.copytree(world["ckpt"], model / "model")
    _cli(capsys, train_cli.main, _train(world, model, init=model / "model"), ins + [model],
         needles=("--out/model",))


def test_damaged_newest_training_checkpoint_falls_back(tmp_path, capfd):
    import jax.numpy as jnp

    from svlm_jax.train.checkpoint import TrainCheckpointer

    d = tmp_path / "checkpoints"
    ck = TrainCheckpointer(d, every=1, keep=3)
    for s in (1, 2, 3):
        ck.save(s, {"w": jnp.full((8, 8), float(s))}, None)
    ck.close()
    for f in (d / "3").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"junk")
    kept = _digest([d / "3"])
    ck = TrainCheckpointer(d, every=1, keep=3)
    abstract = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32,
                                          sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
    capfd.readouterr()
    state, step = ck.restore(abstract, None)
    assert step == 2 and float(state["w"][0, 0]) == 2.0
    _one_line(capfd.readouterr().err, "step 3", "damaged", "checkpoints.damaged")
    moved = tmp_path / "checkpoints.damaged" / "3"
    assert {k.replace(str(moved), ""): v for k, v in _digest([moved]).items()} == \
           {k.replace(str(d / "3"), ""): v for k, v in kept.items()}  # set aside byte for byte, not deleted
    ck.save(3, {"w": jnp.full((8, 8), 9.0)}, None, force=True)  # the step can be trained again
    ck.close()


# ------------------------------------------------------------------------------- eval, serve, reproduce, chunking
def _eval_inputs(world, tmp_path):
    """An Inf-Streams-Eval directory (metadata only), scoring windows, two merged results and an events file:
    enough for every refusal below, which all come before a video is opened or a model is loaded."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "eval_all_metadata.jsonl").write_text(json.dumps({"video": "g.mp4", "content": [[0, 1, "red"]]}) + "\n")
    files = {"data": data, "ckpt": world["ckpt"]}
    for name, row in (("clips", {"video": "g.mp4", "content": [[0, 1, "red"], [9, 10, "ball"]]}),
                      ("a", {"video": "g.mp4", "chunk_start": 0, "chunk_end": 10, "items": []}),
                      ("events", {"video": "g.mp4", "video_id": "g", "event_id": 0, "begin": 0, "end": 2}),
                      ("preds", {"video_id": "g", "event_id": 0, "pred": "red"})):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(json.dumps(row) + "\n")
    return files


def test_eval_inf_streams_refuses_bad_inputs_and_outputs_over_inputs(world, tmp_path, capsys):
    from experiments import eval_inf_streams

    f = _eval_inputs(world, tmp_path)
    ins = [f["data"], f["ckpt"], f["clips"], f["a"]]
    gen = ["generate", "--data", str(f["data"]), "--ckpt", f["ckpt"], "--no-progress"]
    for argv, needle in [(gen + ["--out", str(f["data"])], "--out directory"),
                         (gen + ["--out", os.path.join(f["ckpt"], "results")], "lies inside the input"),
                         (gen + ["--out", str(tmp_path / "o"), "--data", str(tmp_path / "nodata")], "--data"),
                         (gen + ["--out", str(tmp_path / "o"), "--chunk", "0"], "--chunk"),
                         (gen + ["--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "nockpt")], "nockpt"),
                         (["gpt-baseline", "--data", str(f["data"]), "--clips", str(f["clips"]), "--out",
                           str(f["data"])], "--out directory")]:
        _cli(capsys, eval_inf_streams.main, argv, ins, needles=(needle,))
    judge = ["judge", "--clips", str(f["clips"]), "--a", str(f["a"]), "--b", str(f["a"]), "--judge", "openai:x",
             "--api-key", "k", "--no-progress"]
    run = tmp_path / "run"
    for argv, needle in [(judge + ["--out", str(run), "--cache", str(f["a"])], "judgment cache"),
                         (judge + ["--out", str(run), "--cache", str(run / "judged.jsonl")], "output judged.jsonl"),
                         (judge + ["--out", str(f["clips"])], "--out directory")]:
        _cli(capsys, eval_inf_streams.main, argv, ins, needles=(needle,))
    # score's outputs may not be its inputs; --a without --b is refused rather than ignored.
    run.mkdir(exist_ok=True)
    (run / "judged.jsonl").write_text("")
    clips_in_out = run / "scores.json"
    shutil.copy(f["clips"], clips_in_out)
    score = ["score", "--out", str(run)]
    for argv, needle in [(score + ["--clips", str(clips_in_out)], "output scores.json"),
                         (score + ["--clips", str(f["clips"]), "--a", str(f["a"])], "--a and --b together")]:
        _cli(capsys, eval_inf_streams.main, argv, ins + [run], needles=(needle,))


def test_eval_livesports_and_vqa_refuse_bad_inputs_and_outputs_over_inputs(world, tmp_path, capsys):
    from experiments import eval_livesports, eval_vqa

    f = _eval_inputs(world, tmp_path)
    ins = [f["data"], f["ckpt"], f["events"], f["preds"]]
    gen = ["generate", "--events", str(f["events"]), "--videos", str(f["data"]), "--ckpt", f["ckpt"],
           "--no-progress"]
    baseline = tmp_path / "ls" / "score.json"  # a baseline file where the judge step writes its score
    baseline.parent.mkdir()
    shutil.copy(f["preds"], baseline)
    judge = ["judge", "--events", str(f["events"]), "--baseline", str(baseline), "--pred", str(f["preds"]),
             "--judge", "openai:x", "--api-key", "k", "--no-progress", "--out", str(baseline.parent)]
    for argv, needle in [(gen + ["--out", str(f["data"] / "ls")], "lies inside the input"),
                         (gen + ["--out", str(tmp_path / "o"), "--videos", str(tmp_path / "novideos")], "--videos"),
                         (judge, "output score.json")]:
        _cli(capsys, eval_livesports.main, argv, ins + [tmp_path / "ls"], needles=(needle,))
    vqa = ["--bench", "lvb", "--data", str(f["data"]), "--ckpt", f["ckpt"], "--no-progress"]
    for argv, needle in [(vqa + ["--out", str(f["data"])], "--out directory"),
                         (vqa + ["--out", str(tmp_path / "o"), "--batch", "0"], "--batch"),
                         (vqa[:3] + [str(tmp_path / "nodata")] + vqa[4:], "--data")]:
        _cli(capsys, eval_vqa.main, argv, ins, needles=(needle,))


def test_serve_reproduce_and_chunk_data_refuse_bad_inputs(world, tmp_path, capsys):
    from experiments import chunk_data, reproduce, serve

    _cli(capsys, serve.main, ["--ckpt", str(tmp_path / "nockpt")], [], needles=("nockpt", "does not exist"))
    _cli(capsys, serve.main, ["--ckpt", world["ckpt"], "--max-sessions", "0"], [world["ckpt"]],
         needles=("max_sessions",))
    run = tmp_path / "rep"
    (run / "data").mkdir(parents=True)
    (run / "data" / "world.json").write_text("{}")
    for argv, needle in [(["--quick", "--out", str(run), "--doc", str(run / "data" / "world.json")], "--doc"),
                         (["--quick", "--out", world["tok"]], "--out")]:
        _cli(capsys, reproduce.main, argv, [run, world["tok"]], needles=(needle,))
    raw = tmp_path / "raw_seeks.jsonl"
    raw.write_text(json.dumps(record_to_json("v.mp4", 0, 30, [(1, 2, "red")])) + "\n")
    for argv, needle in [([str(raw), str(raw), "--force"], "is the input"),
                         ([str(raw), str(tmp_path / "raw_with_seeks.jsonl")], "seeks file"),
                         ([str(tmp_path / "nosrc.jsonl"), str(tmp_path / "dst.jsonl")], "nosrc.jsonl")]:
        _cli(capsys, chunk_data.main, argv, [raw], needles=(needle,))


def test_exit_cli_skips_teardown_only_after_an_interrupt():
    # errors.py loaded on its own (it needs only the standard library), not through svlm_jax's JAX imports
    code = ("import atexit, importlib.util as u, sys; s = u.spec_from_file_location('e', 'svlm_jax/errors.py'); "
            "e = u.module_from_spec(s); s.loader.exec_module(e); atexit.register(print, 'teardown'); "
            "print('said', end=''); e.exit_cli(int(sys.argv[1]))")
    for rc, out in ((130, "said"), (2, "saidteardown\n")):
        p = subprocess.run([sys.executable, "-c", code, str(rc)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert (p.returncode, p.stdout) == (rc, out), p.stderr


# ------------------------------------------------------------------------------- library API
def test_forward_refuses_empty_input_ids(world):
    with pytest.raises(ValueError, match="non-empty"):
        svlm_jax.forward(CFG, world["params"], np.zeros((1, 0), np.int32))


def test_check_output_sees_through_links(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "a.mp4", tmp_path / "link.vtt")
    with pytest.raises(ConfigError, match="is the input"):
        check_output(tmp_path / "link.vtt", [tmp_path / "a.mp4"])
    check_output(tmp_path / "b.vtt", [tmp_path / "a.mp4"])


def test_error_types_are_value_errors_of_their_domain():
    for cls in (VideoError, CheckpointError, ConfigError):
        assert issubclass(cls, ValueError)


# ------------------------------------------------------------------------------- subprocesses
def _python(*args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_cli_processes_exit_2_with_one_line(world, tmp_path):
    cases = [(["-m", "experiments.stream", "--ckpt", world["ckpt"], "--video", world["video"], "--vtt",
               world["video"]], "--vtt"),
             (["-m", "converters.hf_to_jax", world["hf"], world["hf"], "--overwrite"], "DST"),
             (["-m", "experiments.train", "--data", str(tmp_path / "typo.jsonl"), "--tokenizer", world["tok"],
               "--out", str(tmp_path / "run")], "typo.jsonl"),
             (["-m", "experiments.chunk_data", world["tok"], world["tok"], "--force"], "dst")]
    before = _digest([world["video"], world["hf"], world["tok"]])
    procs = [(_python(*argv), needle) for argv, needle in cases]  # run side by side
    for p, needle in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err
        _one_line(err, needle)
    assert _digest([world["video"], world["hf"], world["tok"]]) == before


def test_sigint_and_a_closed_pipe_end_the_stream_cleanly(world, tmp_path):
    long_video = write_synthetic(str(tmp_path / "long.mp4"), 120, rate=2, h=64, w=64)
    argv = ["-m", "experiments.stream", "--ckpt", world["ckpt"], "--video", long_video, "--jsonl"] + FAST
    vtt = tmp_path / "live.vtt"
    interrupted = _python(*argv, "--vtt", str(vtt))
    piped = _python(*argv)
    first = interrupted.stdout.readline()  # streaming has started
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    _one_line(err, "interrupted after")
    assert json.loads(first)["t0"] == 0.0 and vtt.read_text().startswith("WEBVTT")
    piped.stdout.readline()
    piped.stdout.close()  # like `| head -1`
    t0 = time.time()
    while piped.poll() is None and time.time() - t0 < 120:
        time.sleep(0.2)
    err = piped.stderr.read()
    assert piped.returncode == 0 and "Traceback" not in err, err


def test_sigint_while_loading_is_one_line(world, tmp_path):
    long_video = write_synthetic(str(tmp_path / "long.mp4"), 60, rate=2, h=64, w=64)
    p = _python("-m", "experiments.stream", "--ckpt", world["ckpt"], "--video", long_video)
    time.sleep(1.5)  # most likely inside the imports of jax or the loading of the checkpoint
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    _one_line(err, "interrupted")


# ------------------------------------------------------------------------------- property tests
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=12)
_word = st.tuples(st.floats(-5, 50), st.floats(-5, 50), st.text(max_size=6))
_record = st.builds(lambda s, d, words, prev, q: record_to_json("v.mp4", s, s + d, words, previous=prev, query=q),
                    st.floats(-1, 30), st.floats(-1, 30), st.lists(_word, max_size=5), st.text(max_size=8),
                    st.none() | st.text(max_size=8))


_lines = st.lists(st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
                            _json.map(lambda v: json.dumps(v).encode()),
                            _record.map(lambda r: json.dumps(r).encode()),
                            st.integers(1, 3000).map(lambda n: b"[" * n),
                            _record.map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2])),
                  max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_lines)
def test_jsonl_reader_uses_or_counts_every_line(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, report = read_jsonl(path, check_video=False)
    assert report.lines == sum(1 for x in lines if x.strip())
    assert report.kept == len(records) and report.kept + sum(report.skipped.values()) == report.lines
    for r in records:
        # As the original: any span with end > start, any (or no) words; a start is a finite float or None.
        finite = all(abs(e) < float("inf") and (s is None or abs(s) < float("inf")) for s, e, _ in r.words)
        assert r.start < r.end and finite


def _parse_vtt(text: str) -> list[tuple[str, str, str]]:
    """(start, end, payload) cues of a WebVTT file written by Outputs; asserts the layout on the way."""
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for block in filter(None, text[len("WEBVTT\n\n"):].split("\n\n")):
        timing, payload = block.split("\n")  # exactly one payload line
        start, arrow, end = timing.split(" ")
        assert arrow == "-->" and "-->" not in payload and payload
        cues.append((start, end, payload.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))
    return cues


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(), max_size=6))
def test_vtt_and_jsonl_writers_keep_every_second(tmp_path, texts):
    import io

    vtt, out = tmp_path / "fuzz.vtt", io.StringIO()
    comments = [Comment(stream=0, index=i, t0=float(i), t1=i + 1.0, text=t, tokens=(), vision_ms=0.0,
                        prefill_ms=0.0, decode_ms=0.0, n_tokens=0) for i, t in enumerate(texts)]
    outputs = stream_cli.Outputs(jsonl=True, vtt_path=str(vtt), out=out)
    for c in comments:
        outputs.write(c)
    outputs.close()
    rows = [json.loads(x) for x in out.getvalue().split("\n") if x]
    assert [r["text"] for r in rows] == texts  # one line per second, text exact
    cues = _parse_vtt(vtt.read_text(encoding="utf-8"))
    spoken = [(stream_cli.vtt_time(c.t0), " ".join(c.text.split())) for c in comments if c.text.split()]
    assert [(s, p) for s, _, p in cues] == spoken
