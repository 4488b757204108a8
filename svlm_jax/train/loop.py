"""The training loop: resume, steps with gradient accumulation, eval, checkpoints, logs and the loss plot.

Faults: a non-finite loss stops the run with `NonFiniteLoss` naming the step; the state that produced
it is never saved, so the last checkpoint stays the last good one. SIGINT/SIGTERM ask the loop to stop
at the next step boundary, save a checkpoint and return (a second signal interrupts at once). A rerun
with the same output directory restores the latest readable checkpoint, data position included (a
damaged newer one is named and moved aside, see `TrainCheckpointer.restore`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax

from svlm_jax.data.pipeline import SKIPPED_KEY
from svlm_jax.train import sharding as shd
from svlm_jax.train.checkpoint import TrainCheckpointer
from svlm_jax.train.step import Trainer, TrainState

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class NonFiniteLoss(FloatingPointError):
    """The loss or a gradient became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """out: run directory; intervals are in optimizer steps; eval_batches: batches per eval pass."""

    out: str
    total_steps: int
    eval_every: int = 100
    save_every: int = 100
    keep: int = 3
    eval_batches: int = 0
    baseline: float | None = None
    progress: bool = True


@dataclasses.dataclass
class LoopResult:
    """What the run did: final step, last train/eval loss, skip counts and seconds spent training."""

    step: int
    train_loss: float | None
    eval_loss: float | None
    skipped: dict[str, int]
    seconds: float
    resumed_from: int | None
    interrupted: bool = False


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second signal raises at once."""

    def __init__(self):
        self.set = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file (missing file: empty)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
    return out


def _trim_metrics(path: str, step: int) -> None:
    """Drop records after `step` (written by a run that died before its next checkpoint)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def plot_losses(metrics_path: str, png_path: str, baseline: float | None = None) -> None:
    """Train loss per step, eval loss, and the unigram baseline, to a PNG (written atomically)."""
    from svlm_jax import figures

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = figures.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / label token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    figures.save(fig, png_path)


def evaluate(trainer: Trainer, params, batches: Iterator[dict[str, Any]], n_batches: int) -> float:
    """Mean token loss over the next n_batches batches."""
    total = count = 0.0
    for _ in range(n_batches):
        batch = next(batches)
        batch.pop(SKIPPED_KEY, None)
        out = trainer.eval_step(params, shd.shard_batch(batch, trainer.mesh))
        total += float(out["loss_sum"])
        count += float(out["tokens"])
    return total / max(count, 1.0)


def train(trainer: Trainer, init_state: Callable[[], TrainState], train_iter, cfg: LoopConfig,
          eval_iter: Iterator[dict[str, Any]] | None = None,
          on_step: Callable[[int, TrainState], None] | None = None) -> tuple[TrainState, LoopResult]:
    """Run (or resume) training to cfg.total_steps; returns the final state and a summary.

    train_iter: the Grain iterator of microbatches (its position is checkpointed);
    init_state: builds the step-0 state when there is no checkpoint; on_step: called after each step.
    """
    os.makedirs(cfg.out, exist_ok=True)
    metrics_path = os.path.join(cfg.out, METRICS_FILE)
    ckpt = TrainCheckpointer(os.path.join(cfg.out, "checkpoints"), every=cfg.save_every, keep=cfg.keep)
    lead = jax.process_index() == 0
    last_loss = last_eval = None
    resumed = ckpt.latest_step
    if resumed is not None:
        state, step = ckpt.restore(trainer.abstract_state, train_iter)  # damaged newest ones are set aside
        resumed = step
        _trim_metrics(metrics_path, step)
        # A rerun of a finished run trains nothing; report the losses it ended with.
        for r in read_metrics(metrics_path):
            if r.get("kind") == "train":
                last_loss = r["loss"]
            elif r.get("kind") == "eval":
                last_eval = r["eval_loss"]
        if lead:
            print(f"Resuming from the checkpoint of step {step} in {ckpt.directory} (data position included).")
    else:
        state, step = init_state(), 0
    accum = trainer.optim_cfg.accum_steps
    skipped: collections.Counter = collections.Counter()
    t_start = time.time()
    interrupted = False
    pbar = None
    if cfg.progress and lead:
        from tqdm import tqdm

        pbar = tqdm(total=cfg.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    log = open(metrics_path, "a") if lead else None

    def write(row):
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()

    try:
        with _StopFlag() as stop:
            while step < cfg.total_steps:
                t0 = time.time()
                outs, n_input = [], 0
                for _ in range(accum):
                    batch = next(train_iter)
                    skipped.update(batch.pop(SKIPPED_KEY, []))
                    n_input += int(batch["attention_mask"].sum())
                    state, m = trainer.train_step(state, shd.shard_batch(batch, trainer.mesh))
                    outs.append(m)
                outs = jax.device_get(outs)
                loss_sum = sum(float(m["loss_sum"]) for m in outs)
                n_tok = sum(float(m["tokens"]) for m in outs)
                if not all(bool(m["finite"]) for m in outs):
                    ckpt.wait()
                    good = ckpt.latest_step
                    raise NonFiniteLoss(
                        f"The loss became {loss_sum / max(n_tok, 1):.4g} (NaN or inf) at step {step + 1}; the run "
                        f"stopped and the last good checkpoint "
                        f"({'step ' + str(good) if good is not None else 'none yet'}) in {ckpt.directory} is "
                        f"intact. Lower the learning rate or check the data.")
                step += 1
                dt = time.time() - t0
                last_loss = loss_sum / max(n_tok, 1.0)
                lr = trainer.lr(step - 1)
                row = {"kind": "train", "step": step, "loss": last_loss, "lr": lr,
                       "label_tokens": n_tok, "tokens": n_input * jax.process_count(),
                       "tok_s": n_input * jax.process_count() / max(dt, 1e-9),
                       "grad_norm": float(outs[-1]["grad_norm"]),
                       "skipped": sum(skipped.values()), "time": time.time() - t_start}
                write(row)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{row['tok_s']:.0f}", lr=f"{lr:.2e}",
                                     refresh=False)
                    pbar.update(1)
                report = step % cfg.eval_every == 0 or step == cfg.total_steps
                if eval_iter is not None and cfg.eval_batches and report:
                    last_eval = evaluate(trainer, state.params, eval_iter, cfg.eval_batches)
                    write({"kind": "eval", "step": step, "eval_loss": last_eval, "time": time.time() - t_start})
                    if pbar is not None:
                        pbar.write(f"step {step}: eval loss {last_eval:.4f} (train {last_loss:.4f})")
                if pbar is None and lead and report:  # batch jobs without a bar still get a heartbeat
                    done = step - (resumed or 0)
                    eta = (time.time() - t_start) / max(done, 1) * (cfg.total_steps - step)
                    ev = f", eval loss {last_eval:.4f}" if last_eval is not None else ""
                    print(f"step {step}/{cfg.total_steps}: train loss {last_loss:.4f}{ev}, lr {lr:.2e}, "
                          f"{row['tok_s']:.0f} tok/s, ETA {eta / 60:.1f} min", flush=True)
                final = step == cfg.total_steps or stop.set
                ckpt.save(step, state, train_iter, force=final)
                if on_step is not None:
                    on_step(step, state)
                if stop.set and step < cfg.total_steps:
                    interrupted = True
                    if lead:
                        (pbar.write if pbar is not None else print)(
                            f"Stopped by signal at step {step}; checkpoint saved. Rerun the same command to resume.")
                    break
    finally:
        ckpt.wait()
        ckpt.close()
        if pbar is not None:
            pbar.close()
        if log is not None:
            log.close()
    if lead:
        plot_losses(metrics_path, os.path.join(cfg.out, PLOT_FILE), cfg.baseline)
    return state, LoopResult(step=step, train_loss=last_loss, eval_loss=last_eval, skipped=dict(skipped),
                             seconds=time.time() - t_start, resumed_from=resumed, interrupted=interrupted)


def unigram_entropy(token_counts: dict[int, int] | collections.Counter) -> float:
    """Cross-entropy (nats/token) of the best context-free predictor: the entropy of the label unigram."""
    total = sum(token_counts.values())
    return -sum(c / total * math.log(c / total) for c in token_counts.values() if c)
