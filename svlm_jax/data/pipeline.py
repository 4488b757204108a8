"""The Grain input pipeline: samples -> shuffled, decoded, padded batches, with checkpointable state.

An item is a Record (one JSONL line, used whole as the original does), a `mix.LineRef` (a line read
and parsed when used) or a chunker `Chunk`.

    MapDataset.source(SampleSource)   # decode + tokenize one item (retrying the next on failure)
      .seed(seed).shuffle()           # a new permutation every epoch
      .repeat()
      .batch(B, batch_fn=Collate)     # static shapes from the bucket ladders
      .to_iter_dataset()
      .mp_prefetch(workers)           # all of the above runs in worker processes

A chunk whose video cannot be decoded is replaced by the next chunk that can be, and the skip is
counted in the batch (`SKIPPED_KEY`), so a bad file never stops a run. The iterator's
`get_state()` is saved with every checkpoint; restoring it resumes at the same batch.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from svlm_jax.config import ModelConfig
from svlm_jax.data.chunker import Chunk
from svlm_jax.data.sample import BatchShapes, SampleConfig, SampleError, build_sample, collate
from svlm_jax.tokenizer import ChatTokenizer

SKIPPED_KEY = "_skipped"  # host-only: reasons of the chunks skipped while building this batch


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """batch_size: rows per microbatch on this process; num_workers: decoding processes (0: in-process)."""

    batch_size: int = 1
    seed: int = 0
    num_workers: int = 2
    worker_buffer: int = 2
    max_retries: int = 64
    shapes: BatchShapes = BatchShapes()
    pixel_dtype: str = "float32"


class SampleSource(grain.sources.RandomAccessDataSource):
    """Random access to built samples; a chunk that fails is replaced by the next one that works."""

    def __init__(self, chunks: Sequence[Any], tok: ChatTokenizer, model_cfg: ModelConfig,
                 sample_cfg: SampleConfig, max_retries: int = 64):
        if not chunks:
            raise ValueError("The dataset has no samples; check the annotation files.")
        self.chunks, self.tok, self.model_cfg, self.sample_cfg = list(chunks), tok, model_cfg, sample_cfg
        self.max_retries = max_retries

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        n = len(self.chunks)
        for j in range(min(self.max_retries, n)):
            chunk = self.chunks[(int(index) + j) % n]
            try:
                sample = build_sample(chunk, self.tok, self.model_cfg, self.sample_cfg)
            except SampleError as e:
                skipped.append(e.reason)
                continue
            sample[SKIPPED_KEY] = skipped
            return sample
        raise RuntimeError(f"{len(skipped)} chunks in a row from chunk {index} could not be loaded "
                           f"(reasons: {sorted(set(skipped))}); check the videos under the video root.")

    def __repr__(self) -> str:
        return f"SampleSource({len(self.chunks)} chunks)"


class Collate:
    """Grain batch_fn: pad samples to a static-shape batch and carry the skip reasons along."""

    def __init__(self, batch_size: int, model_cfg: ModelConfig, pad_id: int, shapes: BatchShapes,
                 pixel_dtype: str = "float32"):
        self.batch_size, self.model_cfg, self.pad_id, self.shapes = batch_size, model_cfg, pad_id, shapes
        self.pixel_dtype = pixel_dtype

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy in worker processes

        dtype = np.dtype(self.pixel_dtype) if self.pixel_dtype != "bfloat16" else np.dtype(ml_dtypes.bfloat16)
        batch = collate(samples, self.batch_size, self.model_cfg, pad_id=self.pad_id, shapes=self.shapes,
                        pixel_dtype=dtype)
        batch[SKIPPED_KEY] = [r for s in samples for r in s.get(SKIPPED_KEY, [])]
        return batch


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker init: on Linux, have the kernel kill this worker when the training process dies.

    Without it a `kill -9` of the trainer leaves its decoding workers running as orphans.
    """
    del worker_index, worker_count
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _maybe_prefetch(ds: grain.IterDataset, cfg: PipelineConfig) -> grain.IterDataset:
    if cfg.num_workers <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a plain script never parsed them
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                       per_worker_buffer_size=cfg.worker_buffer),
                          worker_init_fn=_die_with_parent)


def shard_chunks(chunks: Sequence[Any], process_index: int, process_count: int) -> list[Any]:
    """This process's share of the items (every process_count-th)."""
    return list(chunks[process_index::process_count])


def train_dataset(chunks: Sequence[Chunk], tok: ChatTokenizer, model_cfg: ModelConfig, sample_cfg: SampleConfig,
                  cfg: PipelineConfig) -> grain.IterDataset:
    """An endless, shuffled stream of training batches (reshuffled every epoch)."""
    src = SampleSource(chunks, tok, model_cfg, sample_cfg, cfg.max_retries)
    ds = grain.MapDataset.source(src).seed(cfg.seed).shuffle().repeat(None)
    ds = ds.batch(cfg.batch_size, drop_remainder=True,
                  batch_fn=Collate(cfg.batch_size, model_cfg, tok.endoftext, cfg.shapes, cfg.pixel_dtype))
    return _maybe_prefetch(ds.to_iter_dataset(), cfg)


def eval_dataset(chunks: Sequence[Chunk], tok: ChatTokenizer, model_cfg: ModelConfig, sample_cfg: SampleConfig,
                 cfg: PipelineConfig) -> tuple[grain.IterDataset, int]:
    """(endless dataset repeating the eval set in a fixed order, batches per pass).

    The last batch of a pass is padded with empty rows, so every pass sees each chunk exactly once.
    """
    src = SampleSource(chunks, tok, model_cfg, sample_cfg, cfg.max_retries)
    ds = grain.MapDataset.source(src).batch(
        cfg.batch_size, drop_remainder=False,
        batch_fn=Collate(cfg.batch_size, model_cfg, tok.endoftext, cfg.shapes, cfg.pixel_dtype))
    return _maybe_prefetch(ds.repeat(None).to_iter_dataset(), cfg), len(ds)


def take(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The next n batches."""
    return [next(it) for _ in range(n)]
