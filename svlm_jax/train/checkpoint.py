"""Training checkpoints: the train state and the Grain iterator position, saved together (Orbax v1).

Each checkpoint is a step directory `<dir>/<step>/` holding two checkpointables, `state` (params,
optimizer state, counters) and `data` (the iterator's state). Orbax writes into a temporary directory
and renames it when complete, so a crash mid-save never leaves a half checkpoint that looks valid.
Only the last `keep` checkpoints are kept.

A checkpoint damaged after it was written (a disk fault, a file deleted by hand) is not fatal:
`restore` names it in one line, moves it aside to `<dir>.damaged/` (it is never deleted) and resumes
from the newest one that reads.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from orbax.checkpoint import v1 as ocp

from svlm_jax.checkpoint import quiet_orbax
from svlm_jax.errors import CheckpointError


class TrainCheckpointer:
    """Save every `every` steps (and whenever forced), keep the newest `keep`, restore the latest."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3):
        if every < 1 or keep < 1:
            raise ValueError(f"Checkpoint interval ({every}) and the number kept ({keep}) must be >= 1.")
        self.directory = os.path.abspath(os.fspath(directory))
        self._ckpt = ocp.training.Checkpointer(
            self.directory,
            save_decision_policy=ocp.training.save_decision_policies.FixedIntervalPolicy(every),
            preservation_policy=ocp.training.preservation_policies.LatestN(keep),
            cleanup_tmp_directories=True,  # leftovers of a save that was killed midway
        )

    @property
    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        latest = self._ckpt.latest
        return None if latest is None else int(latest.step)

    def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
        """Start saving `state` (and the iterator position) at `step` if due; returns whether it saves."""
        items = {"state": state}
        if data_iter is not None:
            items["data"] = data_iter
        return self._ckpt.save_checkpointables(step, items, force=force)

    @property
    def steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first."""
        return sorted(int(c.step) for c in self._ckpt.checkpoints)

    def restore(self, abstract_state: Any, data_iter: Any | None, step: int | None = None) -> tuple[Any, int]:
        """(state, step) of the given or newest readable checkpoint; the iterator moves to its saved position.

        abstract_state: ShapeDtypeStructs with shardings (e.g. `Trainer.abstract_state`). Without `step`,
        a checkpoint that fails to load is reported on stderr, moved to `<dir>.damaged/` and the next older
        one is tried; CheckpointError when none is left.
        """
        candidates = sorted(self.steps, reverse=True) if step is None else [step]
        if not candidates:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        items: dict[str, Any] = {"state": abstract_state}
        if data_iter is not None:
            items["data"] = data_iter
        for s in candidates:
            try:
                with quiet_orbax():
                    out = self._ckpt.load_checkpointables(s, items)
                return out["state"], s
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
                if step is not None:
                    raise CheckpointError(f"The checkpoint of step {s} in {self.directory} is damaged "
                                          f"({_short(e)}).") from e
                moved = self._set_aside(s)
                print(f"warning: the checkpoint of step {s} in {self.directory} is damaged ({_short(e)}); moved it "
                      f"to {moved} and trying the one before.", file=sys.stderr, flush=True)
        raise CheckpointError(f"None of the checkpoints in {self.directory} could be read; they were moved to "
                              f"{self.directory}.damaged. Start over with a new --out, or restore them from a backup.")

    def _set_aside(self, step: int) -> str:
        """Move the step directory out of Orbax's view (kept, never deleted) so a new save can use the step."""
        src = os.path.join(self.directory, str(step))
        dst_root = self.directory + ".damaged"
        os.makedirs(dst_root, exist_ok=True)
        dst, n = os.path.join(dst_root, str(step)), 1
        while os.path.exists(dst):
            n += 1
            dst = os.path.join(dst_root, f"{step}-{n}")
        shutil.move(src, dst)
        self._ckpt.reload()
        return dst

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        self._ckpt.wait()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self._ckpt.close()


def _short(e: BaseException) -> str:
    """The first 160 characters of an exception's message on one line, with its type."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
