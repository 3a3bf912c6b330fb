"""Checkpoints of the train state in `<workdir>/checkpoints` (the only module that imports orbax)."""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Periodic async saves, keep-N, and restore of the latest step."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, every_steps: int):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> Any:
        """The saved state at `step` (default latest), placed like the arrays of `like`."""
        step = self._manager.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it saved."""
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
