"""Peak memory of the converters on a synthetic multi-shard checkpoint.

    python -m experiments.bench_convert_memory [--layers 24] [--hidden 1024] [--shard-mb 200] [--out runs/convert_memory]

Writes a random Qwen2.5-VL-shaped HF checkpoint (sharded safetensors, fp32) into a temp directory,
then runs `python -m converters.hf_to_jax` and `python -m converters.jax_to_hf` on it as child
processes, sampling each child's resident memory from /proc every 50 ms. The peak (the child's own
VmHWM) is compared with the largest shard and the whole model. A baseline run on the tiny model
gives the fixed cost of the imports. Writes <out>.json and <out>.png.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from converters import safetensors_io
from converters.jax_to_hf import plan_shards
from converters.keys import expected_hf_shapes
from svlm_jax.config import ModelConfig, TextConfig, VisionConfig


def synthetic_config(layers: int, hidden: int) -> ModelConfig:
    """A decoder of `layers` x `hidden` (head_dim 64, 4x MLP, 32k vocab, untied) with a small vision tower."""
    heads = hidden // 64
    return ModelConfig(
        vision=VisionConfig(depth=2, hidden_size=256, intermediate_size=512, num_heads=4,
                            fullatt_block_indexes=(1,), out_hidden_size=hidden),
        text=TextConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), mrope_section=(8, 12, 12)),
        image_token_id=31990, video_token_id=31991, vision_start_token_id=31992, vision_end_token_id=31993,
        bos_token_id=31994, eos_token_id=31995)


def write_hf_checkpoint(cfg: ModelConfig, directory: pathlib.Path, shard_bytes: int, seed: int = 0) -> dict:
    """Random fp32 weights for `cfg` as sharded safetensors + index + config.json; returns size facts."""
    shapes = expected_hf_shapes(cfg)
    sizes = {k: int(np.prod(s)) * 4 for k, s in shapes.items()}
    shards = plan_shards(sizes, shard_bytes)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (rng.standard_normal(shapes[k], np.float32) * 0.02) for k in keys}
        safetensors_io.write_file(directory / name, tensors)
        weight_map.update({k: name for k in keys})
        del tensors
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    shard_sizes = [sum(sizes[k] for k in keys) for keys in shards]
    return {"total_bytes": sum(sizes.values()), "shards": len(shards), "largest_shard_bytes": max(shard_sizes),
            "largest_tensor_bytes": max(sizes.values()), "params": sum(sizes.values()) // 4}


# Runs a module as __main__ and, at exit, writes the process's VmHWM (peak RSS, kB) to a file. Read in
# the child itself: the kernel's ru_maxrss survives exec, so it would include the parent's memory at fork.
_WRAPPER = """
import atexit, runpy, sys
def _hwm():
    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    open({out!r}, 'w').write(line.split()[1])
atexit.register(_hwm)
sys.argv = {argv!r}
runpy.run_module({module!r}, run_name='__main__')
"""


def run_measured(module: str, args: list[str], scratch: pathlib.Path) -> dict:
    """Run `python -m module args` as a child; return its peak RSS and an RSS-over-time trace, in MiB."""
    hwm_file = scratch / f"hwm-{time.time_ns()}"
    code = _WRAPPER.format(out=str(hwm_file), argv=[module] + args, module=module)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    trace: list[tuple[float, float]] = []

    def sample():
        status = pathlib.Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                rss = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
                trace.append((time.time() - start, int(rss.split()[1]) / 1024))
            except (OSError, StopIteration):
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.communicate()[0].strip()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed with exit code {proc.returncode}.")
    return {"peak_rss_mib": int(hwm_file.read_text()) / 1024, "seconds": time.time() - start, "summary": out,
            "trace": trace}


def main(argv: list[str] | None = None) -> int:
    """Build the synthetic checkpoint, convert it both ways, write JSON and a plot."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--shard-mb", type=int, default=200, help="largest source shard, MB (10^6 bytes)")
    ap.add_argument("--flush-mb", type=int, default=512, help="hf_to_jax --flush-mb")
    ap.add_argument("--out", default="runs/convert_memory")
    args = ap.parse_args(argv)
    cfg = synthetic_config(args.layers, args.hidden)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "hf").mkdir()
        facts = write_hf_checkpoint(cfg, tmp / "hf", args.shard_mb * 10**6)
        print(f"synthetic checkpoint: {facts['params']:,} params, {facts['total_bytes'] / 2**20:.0f} MiB in "
              f"{facts['shards']} shards (largest {facts['largest_shard_bytes'] / 2**20:.0f} MiB)")
        (tmp / "tiny").mkdir()
        write_hf_checkpoint(ModelConfig.tiny(tie_word_embeddings=False), tmp / "tiny", 10**9)
        runs = {
            "baseline (tiny model)": run_measured("converters.hf_to_jax", [str(tmp / "tiny"), str(tmp / "tiny_jax"),
                                                                           "--no-progress"], tmp),
            "hf_to_jax": run_measured("converters.hf_to_jax", [str(tmp / "hf"), str(tmp / "jax"), "--no-progress",
                                                               "--flush-mb", str(args.flush_mb)], tmp),
            "jax_to_hf": run_measured("converters.jax_to_hf", [str(tmp / "jax"), str(tmp / "back"), "--no-progress",
                                                               "--max-shard-size", f"{args.shard_mb}MB"], tmp),
        }
    for name, r in runs.items():
        print(f"{name}: peak RSS {r['peak_rss_mib']:.0f} MiB, {r['seconds']:.1f}s  [{r['summary']}]")
    result = {"command": " ".join(["python -m experiments.bench_convert_memory"] + (argv or sys.argv[1:])),
              "checkpoint": facts, "flush_mb": args.flush_mb, "runs": runs}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def plot(result: dict, path: pathlib.Path) -> None:
    """RSS over time for each run, against the largest shard and the whole model."""
    from svlm_jax import figures

    fig, ax = figures.subplots(figsize=(7, 4))
    for name, r in result["runs"].items():
        t, rss = zip(*r["trace"]) if r["trace"] else ((), ())
        ax.plot(t, rss, label=f"{name} (peak {r['peak_rss_mib']:.0f} MiB)")
    facts = result["checkpoint"]
    ax.axhline(facts["total_bytes"] / 2**20, ls="--", c="grey", label="whole model")
    ax.axhline(facts["largest_shard_bytes"] / 2**20, ls=":", c="grey", label="largest shard")
    ax.set_xlabel("seconds")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"converter memory, {facts['params'] / 1e6:.0f}M fp32 params in {facts['shards']} shards")
    ax.legend(fontsize=8)
    figures.save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
