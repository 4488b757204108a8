"""What int8 weights and a bf16 or int8 K/V cache cost in quality, on the trained demo model.

    python -m experiments.train --out /tmp/trainrun/default          # once: the demo model and its data
    python -m experiments.bench_quant_quality --run /tmp/trainrun/default

Over the demo's held-out stream (300 s), each variant of the float32 model is measured two ways:
  * teacher-forced on the float32 model's own greedy tokens: the share of positions where the variant's
    greedy choice agrees, and the largest logit difference (relative to the float32 logits' range);
  * free-running (greedy): the demo's event recall and precision.
Variants: weights bfloat16, weights int8 (`quantize_params`), K/V bfloat16, K/V int8 (`StreamConfig.kv_dtype`).
Writes <out>/quant_quality.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import svlm_jax
from svlm_jax.cache import StreamConfig
from svlm_jax.data.synthetic import load_events, score_commentary
from svlm_jax.quant import quantize_params
from svlm_jax.stream import SamplingConfig, Streamer
from svlm_jax.tokenizer import ChatTokenizer
from svlm_jax.video import FrameStream

VARIANTS = {  # name: (weights, kv dtype)
    "float32": ("float32", None), "weights bf16": ("bfloat16", None), "weights int8": ("int8", None),
    "kv bf16": ("float32", "bfloat16"), "kv int8": ("float32", "int8")}


def _stream(cfg, params, tok, scfg, seconds, force=None):
    """Greedy over `seconds`; returns (texts, tokens per second, logits per second [n_i, V])."""
    st = Streamer(cfg, params, tok, scfg, sampling=SamplingConfig(greedy=True), query=None, keep_logits=True)
    texts, toks, logits = [], [], []
    for i, sec in enumerate(seconds):
        c = st.step([sec], force=None if force is None else [force[i]])[0]
        texts.append((c.t0, c.text))
        toks.append(list(c.tokens))
        logits.append(st.last_logits[0, :c.n_tokens].copy())
    return texts, toks, logits


def main(argv=None) -> int:
    """Run every variant; print and write the table."""
    ap = argparse.ArgumentParser(prog="python -m experiments.bench_quant_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="/tmp/trainrun/default", help="a finished `experiments.train` demo run")
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args(argv)
    with open(os.path.join(args.run, "run.json")) as f:
        run = json.load(f)
    run = run.get("args", run)
    model_dir = os.path.join(args.run, "model")
    tok = ChatTokenizer.from_dir(model_dir)
    video = os.path.join(args.run, "data", "videos", "stream_000.mp4")
    events = load_events(os.path.join(args.run, "data", "stream_events.json"))
    with FrameStream.for_model(video, model_dir) as frames:  # as the model was trained: its preprocessing.json
        seconds = [s for _, s in zip(range(args.seconds), frames)]
    from experiments.train import DEMO_CHUNK

    window = run.get("window") or DEMO_CHUNK[0]  # the settings of experiments.train's own streamed evaluation
    base = StreamConfig(vision_window=min(16, window), text_sink=run.get("text_sink") or 512,
                        text_window=run.get("text_window") or 512, max_new_tokens=12, vision_tokens=64,
                        round_tokens=40, query_tokens=0)
    cfg, params = svlm_jax.load(model_dir)
    ref_texts, ref_toks, ref_logits = _stream(cfg, params, tok, base, seconds)
    ref_all = np.concatenate(ref_logits)
    rows = {}
    for name, (weights, kv) in VARIANTS.items():
        if weights == "int8":
            c, p = cfg, quantize_params(cfg, params)
        elif weights == "bfloat16":
            c, p = svlm_jax.load(model_dir, "bfloat16")
        else:
            c, p = cfg, params
        scfg = base.replace(kv_dtype=kv)
        texts, _, _ = _stream(c, p, tok, scfg, seconds)
        _, _, logits = _stream(c, p, tok, scfg, seconds, force=ref_toks)
        got = np.concatenate(logits)
        n = min(len(got), len(ref_all))
        agree = float(np.mean(np.argmax(got[:n], -1) == np.argmax(ref_all[:n], -1)))
        err = float(np.abs(got[:n] - ref_all[:n]).max() / (np.ptp(ref_all[:n]) or 1.0))
        score = score_commentary(events, texts)
        rows[name] = {"greedy_agreement": round(agree, 5), "max_logit_error_rel": round(err, 5),
                      "recall": round(score["recall"], 4), "precision": round(score["precision"], 4),
                      "positions": n}
        print(f"{name:<14} agreement {100 * agree:6.2f}%  max logit error {100 * err:5.2f}% of range  "
              f"recall {100 * score['recall']:5.1f}%  precision {100 * score['precision']:5.1f}%", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "quant_quality")
    with open(stem + ".json.tmp", "w") as f:
        json.dump({"run": args.run, "seconds": len(seconds), "rows": rows}, f, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    from svlm_jax import figures

    fig, ax = figures.subplots(1, 1, figsize=(8, 3.8))
    names = list(rows)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [100 * rows[k]["greedy_agreement"] for k in names], 0.4, label="greedy agreement (%)")
    ax.bar(x + 0.2, [100 * rows[k]["recall"] for k in names], 0.4, label="event recall (%)")
    ax.set(xticks=x, xticklabels=names, ylim=(0, 105), title=f"demo model, {len(seconds)}-s held-out stream")
    ax.legend(loc="lower left")
    figures.save(fig, stem + ".png", dpi=110)
    print(f"wrote {stem}.json and {stem}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
