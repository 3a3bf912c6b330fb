"""Checkpoints of the train state in `<workdir>/checkpoints` (the only module that imports orbax)."""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def _checkpoint_dir(workdir: str | pathlib.Path) -> epath.Path:
    """Orbax wants absolute paths; URLs such as gs://bucket/run already are, and must not be joined to the cwd."""
    text = str(workdir)
    return epath.Path(text if "://" in text else pathlib.Path(text).absolute()) / "checkpoints"


class Checkpointer:
    """Periodic async saves, keep-N, restore of the latest step, and partial restores for evaluation."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, every_steps: int):
        self.directory = _checkpoint_dir(workdir)
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

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore_subtree(self, like: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any]]:
        """(step, the parts of the saved state named by `like`), e.g. {'params': ..., 'batch_stats': ...}.

        `like` holds arrays or jax.ShapeDtypeStructs (with shardings) for a prefix of the saved tree; the rest of
        the state (optimizer moments, method extras) is never read. Raises FileNotFoundError for a missing step and
        ValueError naming the first key whose shape differs (a checkpoint of another architecture).
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {self.directory}: is this a finished or running workdir?")
        step = max(steps) if step is None else step
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; saved steps: {steps}")
        # Read through a handler: the manager has none registered for 'state' until something was saved.
        saved = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state").tree
        _check_shapes(like, saved, self.directory / str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                      partial_restore=True)
        return step, self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]


    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it saved."""
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_shapes(like: Any, saved: Any, path: pathlib.Path) -> None:
    """Names the first key where `like` and the saved tree differ, instead of orbax's multi-page error."""
    saved_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(saved)}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(like):
        key = jax.tree_util.keystr(key_path)
        if key not in saved_flat:
            raise ValueError(f"checkpoint {path} has no {key}: it was saved by another architecture than its "
                             f"config.json describes")
        if tuple(saved_flat[key].shape) != tuple(leaf.shape):
            raise ValueError(f"checkpoint {path} has {key} of shape {tuple(saved_flat[key].shape)}, the config "
                             f"expects {tuple(leaf.shape)}: it was saved by another architecture")
