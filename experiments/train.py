"""SFT on StreamingVLM's pre-chunked samples (the original's recipe), end to end.

With no arguments it runs the embedded demo on a CPU in a few minutes: it writes a synthetic
commentary dataset (shapes that enter, bounce and leave, narrated word by word), cuts it with the
chunker into 8-second samples overlapping by 4 (one JSONL line each, like the released files), trains
a tiny model from scratch, prints the loss against the unigram baseline, then streams the trained
model over a held-out 5-minute video and scores how often it names the events.

    python -m experiments.train                         # the demo, into runs/default
    python -m experiments.train --init ckpt/streamingvlm --data train_s12w24_with_seeks.jsonl:2 \\
        --data train_livecc_with_seeks.jsonl --video-root /data/Inf-Stream-Train --out runs/sft \\
        --batch-size 8 --accum 64 --fsdp 8

With --data every line is one sample, used whole (FILE:N lists a file N times); the defaults become
the original's recipe (training template, 512/512 previous-text block, the original's frames, lr 1e-5
with 3% warmup, frozen vision, bf16 compute). Rerunning a command resumes from its --out.
See docs/TRAINING.md for every flag and for multi-host launches.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import os
import random
import sys
import time

# Recipes: what an unset flag means with --data (the reference) and without it (the synthetic demo).
REFERENCE = dict(preset="7b", steps=3000, batch_size=8, accum=64, lr=1e-5, warmup_ratio=0.03, weight_decay=0.0,
                 freeze="visual", dtype="bfloat16", text_sink=512, text_window=512, template="training",
                 frames="original", resize="torchvision",
                 min_pixels=100 * 28 * 28, max_pixels=768 * 28 * 28, eval_every=100, save_every=20,
                 eval_batches=8, workers=4, max_seq_len=32768)
DEMO = dict(preset="tiny", steps=700, batch_size=8, accum=1, lr=3e-3, warmup_ratio=0.05, weight_decay=0.0,
            freeze="none", dtype="float32", text_sink=32, text_window=32, template="inference", frames="grid",
            resize="torchvision",
            min_pixels=56 * 56, max_pixels=56 * 56, eval_every=100, save_every=100, eval_batches=4, workers=1,
            max_seq_len=1024)


DEMO_CHUNK = (8, 4)  # the demo's samples: 8-s windows every 4 s, cut by the chunker when the set is written


def demo_model_config():
    """The demo's model: ModelConfig.tiny with its 64-wide decoder split into 2 heads of 32 and rope_theta 1e4.

    Same size as tiny (0.24M parameters); wider heads with a lower rope base resolve the short
    distances between a round's vision and its answer, and the model learns to read vision sooner.
    """
    from svlm_jax import ModelConfig
    from svlm_jax.config import TextConfig

    tiny = ModelConfig.tiny()
    t = tiny.text
    return tiny.replace(text=TextConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                                        num_attention_heads=2, num_key_value_heads=1, mrope_section=(4, 6, 6),
                                        rope_theta=1e4, tie_word_embeddings=True,
                                        max_position_embeddings=t.max_position_embeddings))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append",
                   help="training JSONL, one sample per line used whole; FILE:N lists it N times; repeat the flag "
                        "to mix files (default: write the synthetic demo set)")
    g.add_argument("--val-data", action="append", help="validation JSONL, as --data (default: --val-fraction)")
    g.add_argument("--val-fraction", type=float, default=0.01, help="videos held out for eval without --val-data")
    g.add_argument("--video-root", help="directory relative video paths are joined to (default: the JSONL's)")
    g.add_argument("--tokenizer", help="tokenizer.json or its directory (default: the --init checkpoint's)")
    g.add_argument("--window", type=int, help="re-chunk long lines into W-s samples first (off: each line is one "
                                              "sample, as the original; see experiments.chunk_data)")
    g.add_argument("--overlap", type=int, help="overlap of re-chunked samples in seconds (with --window)")
    g.add_argument("--min-words-per-second", type=float, default=2.0, help="keep chunks with >= this * window words")
    g.add_argument("--text-sink", type=int, help="previous-text block tokens kept from its start, header included "
                                                 "(the original's 512)")
    g.add_argument("--text-window", type=int, help="previous-text block tokens kept from its end, footer included "
                                                   "(the original's 512)")
    g.add_argument("--template", choices=["training", "inference"],
                   help="round template: the original's training one, or the one it streams with")
    g.add_argument("--frames", choices=["original", "grid"],
                   help="frame picking: the original's (frames that end in the clip) or the frame shown at each "
                        "1/fps grid time")
    g.add_argument("--resize", choices=["torchvision", "pil"], help="bicubic resize: torchvision antialias or PIL")
    g.add_argument("--fps", type=int, default=2, help="frames per second fed to the model")
    g.add_argument("--min-pixels", type=int, help="per-frame pixel floor for smart_resize")
    g.add_argument("--max-pixels", type=int, help="per-frame pixel budget for smart_resize")
    g.add_argument("--max-seq-len", type=int, help="longest sample in tokens; longer samples are skipped")
    g.add_argument("--workers", type=int, help="Grain worker processes that decode video")
    m = p.add_argument_group("model")
    m.add_argument("--init", help="svlm-jax checkpoint to fine-tune (converters/hf_to_jax makes one)")
    m.add_argument("--preset", help="architecture for a from-scratch model: tiny, 100m, 3b, 7b")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (params stay float32)")
    m.add_argument("--no-remat", action="store_true", help="keep activations instead of recomputing each layer")
    m.add_argument("--attn-chunk", type=int, default=1024,
                   help="query rows per attention block: memory linear in sequence length (0: dense)")
    m.add_argument("--freeze", help="comma-separated parameter prefixes not trained ('visual'; 'none')")
    o = p.add_argument_group("optimization")
    o.add_argument("--steps", type=int, help="optimizer steps")
    o.add_argument("--batch-size", type=int, help="sequences per microbatch, over all devices and hosts")
    o.add_argument("--accum", type=int, help="microbatches per optimizer step")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--warmup-ratio", type=float, help="share of steps with linear warmup")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    o.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    o.add_argument("--seed", type=int, default=0, help="data order and init seed")
    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/default", help="run directory (checkpoints, logs, plot, model)")
    r.add_argument("--eval-every", type=int, help="steps between eval passes")
    r.add_argument("--eval-batches", type=int, help="batches per eval pass (0: no eval)")
    r.add_argument("--save-every", type=int, help="steps between checkpoints")
    r.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    r.add_argument("--no-stream-eval", action="store_true", help="skip the demo's streaming evaluation")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("devices")
    d.add_argument("--data-parallel", type=int, default=-1, help="mesh 'data' axis size (-1: what fsdp leaves)")
    d.add_argument("--fsdp", type=int, default=1, help="mesh 'fsdp' axis size: params and Adam state split over it")
    d.add_argument("--coordinator", help="multi-host: host:port of process 0")
    d.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    d.add_argument("--process-id", type=int, help="multi-host: this process's index")
    d.add_argument("--distributed-auto", action="store_true", help="multi-host: detect SLURM/MPI/TPU settings")
    args = p.parse_args(argv)
    args.demo = args.data is None
    for k, v in (DEMO if args.demo else REFERENCE).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.demo and args.init:
        p.error("--init needs --data: the synthetic demo trains a tiny model from scratch.")
    if (args.window is None) != (args.overlap is None):
        p.error("--window and --overlap go together: pass both to re-chunk lines, or neither to use them whole.")
    return args


# Flags that may change between a run and its resumption; all others must match.
_RESUMABLE = {"eval_every", "eval_batches", "save_every", "keep", "workers", "no_stream_eval", "no_progress",
              "attn_chunk", "coordinator", "num_processes", "process_id", "distributed_auto"}


def _check_resume(args, out: str) -> None:
    """Make sure a resumed run uses the same flags as the run in `out` (ConfigError naming the differences)."""
    from svlm_jax.errors import ConfigError

    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); it records the flags of the run in {out}: fix it, or delete it "
                          f"to resume with the flags given now.") from None
    flags = {k: v for k, v in sorted(vars(args).items())}
    diff = {k: (old.get(k), v) for k, v in flags.items() if k not in _RESUMABLE and old.get(k) != v}
    if diff:
        raise ConfigError(f"{out} holds a run with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                          "rerun with the same flags to resume, or pick a new --out.")


def _write_run(args, out: str) -> None:
    """Record the run's flags in run.json (atomically), once every input has been checked."""
    path = os.path.join(out, "run.json")
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump({k: v for k, v in sorted(vars(args).items())}, f, indent=1)
    os.replace(tmp, path)


def _paths(value) -> list[str]:
    """A path flag's value as a list (None: empty; repeated flags give lists)."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _model_config(args):
    """The model's config: the --init checkpoint's, the demo's, or the --preset's."""
    if args.init:
        from svlm_jax.checkpoint import load_config

        return load_config(args.init)
    if args.demo:
        return demo_model_config()
    from svlm_jax import ModelConfig

    return ModelConfig.preset(args.preset)


def _check_inputs(args) -> None:
    """Refuse a run that cannot work before anything is written: missing inputs, an --out that is a file or
    one of the inputs, unknown --freeze prefixes. Raises the domain's error naming the flag."""
    from svlm_jax.errors import ConfigError, DataNotFound, check_output

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out!r} is a file; pass a directory for the run (it is created if missing).")
    from svlm_jax.data.mix import DataSpec

    data = {flag: [DataSpec.parse(a).path for a in _paths(value)]
            for flag, value in (("--data", args.data), ("--val-data", args.val_data))}
    for flag, paths in data.items():
        for p in paths:
            if not os.path.isfile(p):
                raise DataNotFound(f"{flag} {p!r} does not exist or is not a file; pass a JSONL annotation file.")
    if args.video_root is not None and not os.path.isdir(args.video_root):
        raise DataNotFound(f"--video-root {args.video_root!r} is not a directory.")
    if args.tokenizer is not None and not os.path.exists(args.tokenizer):
        raise DataNotFound(f"--tokenizer {args.tokenizer!r} does not exist; pass a tokenizer.json or its directory.")
    inputs = data["--data"] + data["--val-data"] + _paths(args.tokenizer) + _paths(args.init)
    check_output(args.out, inputs, what="--out directory")
    check_output(os.path.join(args.out, "model"), inputs, what="exported model directory (--out/model)",
                 replaces=True)
    cfg = _model_config(args)
    from svlm_jax import param_shapes
    from svlm_jax.train.optim import check_frozen

    check_frozen(param_shapes(cfg), _frozen(args.freeze), flag="--freeze")


def _frozen(flag: str) -> tuple[str, ...]:
    return () if flag in ("", "none") else tuple(s.strip() for s in flag.split(",") if s.strip())


def _split_by_video(records, fraction: float, seed: int):
    """Hold out whole videos (overlapping samples of one video stay on one side); lazy lines by index."""
    key = [getattr(r, "video", None) or f"{r.path}@{r.offset}" for r in records]
    videos = sorted(set(key))
    n_val = max(1, int(round(len(videos) * fraction))) if len(videos) > 1 else 0
    held = set(random.Random(seed).sample(videos, n_val))
    return [r for r, k in zip(records, key) if k not in held], [r for r, k in zip(records, key) if k in held]


def unigram_baseline(items, tok, sample_cfg, limit: int = 2000) -> float:
    """Entropy (nats/token) of the labelled tokens of up to `limit` samples: the best loss without context.

    A whole line's rounds are taken as its whole seconds (its frames are not read here).
    """
    from svlm_jax.data.format import Record, RecordError
    from svlm_jax.data.sample import record_to_chunk, tokenize_chunk
    from svlm_jax.train.loop import unigram_entropy

    counts: collections.Counter = collections.Counter()
    step = max(1, len(items) // limit)
    for c in items[::step]:
        if hasattr(c, "load") and not isinstance(c, Record):
            try:
                c = c.load()
            except (RecordError, OSError):
                continue
        if isinstance(c, Record):
            c = record_to_chunk(c, max(1, int(c.end - c.start + 1e-6)), sample_cfg.fps)
        ids, mask = tokenize_chunk(tok, c, 0, sample_cfg)
        counts.update(ids[mask].tolist())
    return unigram_entropy(counts)


def stream_eval(cfg, params, tok, paths, args, log, model=None) -> dict:
    """Stream the trained model over the held-out synthetic video and score its event calls.

    model: the saved checkpoint directory, whose preprocessing.json the frames follow, as they do in the
    stream CLI (default: the preprocessing of the flags, the one it is saved with).
    """
    from experiments.stream import Outputs
    from svlm_jax.cache import StreamConfig
    from svlm_jax.checkpoint import Preprocessing
    from svlm_jax.data.synthetic import load_events, score_commentary
    from svlm_jax.stream import SamplingConfig, Streamer
    from svlm_jax.video import FrameStream

    events = load_events(paths["stream_events"])
    scfg = StreamConfig(vision_window=min(16, args.window or DEMO_CHUNK[0]), text_sink=args.text_sink,
                        text_window=args.text_window, max_new_tokens=12, vision_tokens=64, round_tokens=40,
                        query_tokens=0)
    streamer = Streamer(cfg, params, tok, scfg, sampling=SamplingConfig(greedy=True), query=None)
    comments = []
    t0 = time.time()
    vtt = os.path.join(args.out, "stream_eval.vtt")
    subtitles = Outputs(jsonl=False, vtt_path=vtt, out=io.StringIO())
    try:
        # Frames made as in training (the demo's "grid", 56x56), so the model streams what it learned on.
        if model is None:
            model = Preprocessing(fps=args.fps, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                  frames=getattr(args, "frames", "grid"), resize=getattr(args, "resize", "torchvision"))
        with FrameStream.for_model(paths["stream_video"], model) as frames:
            for c in streamer.run(frames):
                comments.append((c.t0, c.text))
                subtitles.write(c)
    finally:
        subtitles.close()
    seconds = time.time() - t0
    score = score_commentary(events, comments)
    score["stream_seconds"] = len(comments)
    score["wall_seconds"] = seconds
    with open(os.path.join(args.out, "stream_eval.jsonl"), "w") as f:
        for (t, text) in comments:
            f.write(json.dumps({"t0": t, "text": text}) + "\n")
    log(f"Streamed {len(comments)} s of held-out video ({len(comments) / DEMO_CHUNK[0]:.1f}x a training sample) "
        f"in {seconds:.1f} s; transcript in {args.out}/stream_eval.jsonl. Watch it: play {paths['stream_video']} "
        f"with {vtt} as subtitles.")
    for t, text in comments[:12]:
        want = " | ".join(e.phrase for e in events if e.round == int(t)) or "..."
        log(f"  t={t:5.1f}s  model: {text or '...':<40}  truth: {want}")
    return score


def main(argv=None) -> int:
    """The CLI; returns the exit code (2 with one line on stderr for bad input, 130 when interrupted)."""
    from svlm_jax.errors import cli_main

    args = parse_args(argv)
    return cli_main(lambda: _main(args), "train")


def _main(args) -> int:
    # Grain hands batches over in shared memory. Segments still referenced at exit are unlinked by
    # multiprocessing's resource tracker, which warns about each; the cleanup is complete, so keep the
    # log clean (the tracker process inherits this filter).
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    t_start = time.time()
    from svlm_jax.train.sharding import init_distributed

    init_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed_auto)
    import jax
    import jax.numpy as jnp

    import svlm_jax
    from svlm_jax import init_params, param_shapes
    from svlm_jax.data import synthetic
    from svlm_jax.data.chunker import ChunkConfig, chunk_records
    from svlm_jax.data.format import Record, RecordError
    from svlm_jax.data.mix import DataSpec, load_mix
    from svlm_jax.data.pipeline import PipelineConfig, eval_dataset, shard_chunks, train_dataset
    from svlm_jax.data.sample import BatchShapes, SampleConfig, geometric_buckets
    from svlm_jax.errors import ConfigError, DataError
    from svlm_jax.tokenizer import ChatTokenizer
    from svlm_jax.train import loop as loop_lib
    from svlm_jax.train.optim import OptimConfig
    from svlm_jax.train.sharding import check_batch_size, make_mesh
    from svlm_jax.train.step import StepConfig, Trainer

    lead = jax.process_index() == 0
    log = print if lead else (lambda *a, **k: None)
    _check_inputs(args)
    _check_resume(args, args.out)
    os.makedirs(args.out, exist_ok=True)

    # ---------------------------------------------------------------- model config and tokenizer
    cfg = _model_config(args).replace(dtype=args.dtype)
    paths = {}
    if args.demo:
        t = time.time()
        spec = synthetic.SyntheticSpec(seed=args.seed)
        chunking = ChunkConfig(window=DEMO_CHUNK[0], overlap=DEMO_CHUNK[1],
                               min_words_per_second=args.min_words_per_second)
        paths = synthetic.write_dataset(os.path.join(args.out, "data"), spec, cfg, chunk=chunking)
        log(f"Synthetic dataset in {args.out}/data: {spec.train_videos} train + {spec.val_videos} val videos of "
            f"{spec.video_seconds} s cut into {DEMO_CHUNK[0]}-s samples every {DEMO_CHUNK[0] - DEMO_CHUNK[1]} s, one "
            f"{spec.stream_seconds}-s held-out stream ({time.time() - t:.1f} s)")
        train_path, val_path, tok_path = [paths["train_chunks"]], [paths["val_chunks"]], paths["tokenizer"]
    else:
        train_path, val_path = args.data, args.val_data
        tok_path = args.tokenizer or args.init
        if tok_path is None:
            raise ConfigError("No tokenizer: pass --tokenizer (a tokenizer.json) or an --init checkpoint that has one.")
    tok = ChatTokenizer.from_dir(tok_path)
    tok.check_model(cfg)

    # ---------------------------------------------------------------- data
    items = load_mix([DataSpec.parse(a) for a in train_path], args.video_root, log=log)
    if val_path:
        val_items = load_mix([DataSpec.parse(a) for a in val_path], args.video_root, log=log)
    else:
        items, val_items = _split_by_video(items, args.val_fraction, args.seed)
    if args.window:  # explicit re-chunking of long lines (the original uses every line whole)
        ccfg = ChunkConfig(window=args.window, overlap=args.overlap, min_words_per_second=args.min_words_per_second)

        def records(xs):
            out = []
            for x in xs:
                try:
                    out.append(x if isinstance(x, Record) else x.load())
                except (RecordError, OSError):
                    continue
            return out

        items, val_items = chunk_records(records(items), ccfg), chunk_records(records(val_items), ccfg)
    if not items:
        raise DataError(f"No training samples in {', '.join(train_path)}"
                         + (f" with {args.window}-s windows of {args.min_words_per_second * args.window:g} words; "
                            "check the data or --min-words-per-second." if args.window else "; check the data."))
    scfg = SampleConfig(text_sink=args.text_sink, text_window=args.text_window, fps=args.fps,
                        min_pixels=args.min_pixels, max_pixels=args.max_pixels, max_seq_len=args.max_seq_len,
                        template=args.template, frames=args.frames, resize=args.resize)
    baseline = unigram_baseline(items, tok, scfg)
    what = f"{args.window}-s chunks, {args.overlap}-s overlap" if args.window else "one per line, used whole"
    log(f"{len(items)} training samples, {len(val_items)} eval samples ({what}; {args.template} template); "
        f"unigram baseline of the labels: {baseline:.4f} nats/token")
    chunks, val_chunks = items, val_items

    mesh = make_mesh(args.data_parallel, args.fsdp)
    check_batch_size(args.batch_size, mesh)
    per_process = args.batch_size // jax.process_count()
    shapes = BatchShapes(seq=geometric_buckets(256, args.max_seq_len, 64))
    pcfg = PipelineConfig(batch_size=per_process, seed=args.seed, num_workers=args.workers, shapes=shapes,
                          pixel_dtype=args.dtype)
    mine = shard_chunks(chunks, jax.process_index(), jax.process_count())
    train_iter = iter(train_dataset(mine, tok, cfg, scfg, pcfg))
    eval_iter, eval_batches = None, 0
    if val_chunks and args.eval_batches:
        eval_cfg = dataclasses.replace(pcfg, num_workers=min(args.workers, 1))
        val_mine = shard_chunks(val_chunks[: args.eval_batches * args.batch_size], jax.process_index(),
                                jax.process_count())
        ds, eval_batches = eval_dataset(val_mine, tok, cfg, scfg, eval_cfg)
        eval_iter = iter(ds)

    # ---------------------------------------------------------------- trainer
    frozen = _frozen(args.freeze)
    ocfg = OptimConfig(lr=args.lr, warmup_ratio=args.warmup_ratio, total_steps=args.steps,
                       weight_decay=args.weight_decay, clip_norm=args.clip, accum_steps=args.accum, frozen=frozen)
    abstract = param_shapes(cfg)
    trainer = Trainer(cfg, ocfg, mesh, abstract, StepConfig(remat=not args.no_remat, attn_chunk=args.attn_chunk or None))

    def fresh_state():
        if args.init:
            _, params = svlm_jax.load(args.init, dtype=jnp.float32)
        else:
            params = init_params(cfg, jax.random.key(args.seed))
        return trainer.init(params)

    if lead:  # every input is checked: from here on this --out belongs to this command
        _write_run(args, args.out)
    lcfg = loop_lib.LoopConfig(out=args.out, total_steps=args.steps, eval_every=args.eval_every,
                               save_every=args.save_every, keep=args.keep, eval_batches=eval_batches,
                               baseline=baseline, progress=not args.no_progress)
    log(f"Training {args.preset if not args.init else args.init} ({svlm_jax.count_params(abstract) / 1e6:.2f}M "
        f"params, {args.dtype}) for {args.steps} steps of {args.accum} x {args.batch_size} sequences on "
        f"{mesh.devices.size} device(s), mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}")
    try:
        state, res = loop_lib.train(trainer, fresh_state, train_iter, lcfg, eval_iter)
    finally:  # stop the decoding workers and release their shared memory
        for it in (train_iter, eval_iter):
            if it is not None and hasattr(it, "close"):
                it.close()
    if res.skipped:
        log(f"Samples skipped while loading: {dict(res.skipped)}")
    if res.interrupted:
        return 130
    log(f"Final train loss {res.train_loss:.4f}, eval loss "
        f"{res.eval_loss if res.eval_loss is None else round(res.eval_loss, 4)} vs unigram baseline {baseline:.4f} "
        f"nats/token; plot in {args.out}/{loop_lib.PLOT_FILE}, metrics in {args.out}/{loop_lib.METRICS_FILE}")

    # ---------------------------------------------------------------- export and demo evaluation
    params = jax.device_get(state.params)
    model_dir = os.path.join(args.out, "model")
    if lead:
        tok_file = tok_path if tok_path.endswith(".json") else os.path.join(tok_path, "tokenizer.json")
        from svlm_jax.checkpoint import Preprocessing

        # The stream CLI reads the preprocessing back, so it shows the model frames as it was trained on.
        svlm_jax.save(model_dir, cfg.replace(dtype="float32"), params, files=[tok_file], overwrite=True,
                      preprocessing=Preprocessing(fps=args.fps, min_pixels=args.min_pixels,
                                                  max_pixels=args.max_pixels, frames=args.frames,
                                                  resize=args.resize))
        log(f"Trained model saved to {model_dir} (load with svlm_jax.load)")
        if args.demo:
            log(f"Stream it yourself: python -m experiments.stream --ckpt {model_dir} --video {paths['stream_video']} "
                f"--query '' --greedy --vtt {os.path.join(args.out, 'my_stream.vtt')}")
    if args.demo and not args.no_stream_eval and lead:
        score = stream_eval(cfg, params, tok, paths, args, log, model=model_dir)
        log(f"Event calls over {score['stream_seconds'] / 60:.1f} min of stream: "
            f"{score['events_per_min']:.1f} events/min, {score['correct_per_min']:.1f} named correctly/min "
            f"(recall {100 * score['recall']:.0f}%), {score['wrong_per_min']:.1f} wrong or extra calls/min "
            f"(precision {100 * score['precision']:.0f}%); within +-1 s: recall {100 * score['recall_1s']:.0f}%")
        with open(os.path.join(args.out, "stream_score.json"), "w") as f:
            json.dump(score, f, indent=1)
    log(f"Done in {time.time() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    from svlm_jax.errors import exit_cli

    # An interrupted run has saved its checkpoint and closed its log before main returns; then the
    # teardown is skipped, as in the other CLIs (it can race XLA's threads into a segfault).
    exit_cli(main())
