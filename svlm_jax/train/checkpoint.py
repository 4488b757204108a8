"""Training checkpoints: the train state and the Grain iterator position, saved together (Orbax v1).

Each checkpoint is a step directory `<dir>/<step>/` holding two checkpointables, `state` (params,
optimizer state, counters) and `data` (the iterator's state). Orbax writes into a temporary directory
and renames it when complete, so a crash mid-save never leaves a half checkpoint that looks valid.
Only the last `keep` checkpoints are kept.
"""
from __future__ import annotations

import os
from typing import Any

from orbax.checkpoint import v1 as ocp


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

    def restore(self, abstract_state: Any, data_iter: Any | None, step: int | None = None) -> tuple[Any, int]:
        """(state, step) of the given or latest checkpoint; the iterator is moved to its saved position.

        abstract_state: ShapeDtypeStructs with shardings (e.g. `Trainer.abstract_state`).
        """
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        items: dict[str, Any] = {"state": abstract_state}
        if data_iter is not None:
            items["data"] = data_iter
        out = self._ckpt.load_checkpointables(step, items)
        return out["state"], step

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        self._ckpt.wait()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self._ckpt.close()
