"""Checkpoints of the train state in `<workdir>/checkpoints` (the only module that imports orbax).

Each checkpoint holds the state and a small JSON item `meta`: a fingerprint of every array (verified on restore,
so damaged bytes are never trained on) and where the input stream stood. Only finite states are saved. Restoring
falls back past unreadable checkpoints, setting each aside in `<workdir>/corrupt_checkpoints/`.
"""
from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax import lax
from jax.experimental import multihost_utils

from sslx import metrics, paths


class CheckpointError(ValueError):
    """No checkpoint of a workdir can be read (each one's reason is in the message)."""


class NonFiniteStateError(FloatingPointError):
    """The state about to be saved holds NaN or Inf: it is not saved."""


def _workdir_path(workdir: paths.PathLike) -> epath.Path:
    """Orbax wants absolute paths; URLs such as gs://bucket/run already are, and must not be joined to the cwd."""
    return paths.absolute(workdir)


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (what a checksum must see: -0.0 and 0.0, NaN payloads all differ)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _fingerprint(tree: Any) -> tuple[jax.Array, list[jax.Array]]:
    """(floating arrays finite with a finite norm, per array [sum of words, position-weighted sum] mod 2^32)."""
    leaves = jax.tree.leaves(tree)
    floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    # Finite values whose squared norm overflows (|x| ~ 1e19 and up) come from a diverged step just the same.
    squared_norm = sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in floats), jnp.float32(0))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats] + [jnp.isfinite(squared_norm)]))
    sums = []
    for x in leaves:
        words = _words(x)
        weights = jnp.arange(words.size, dtype=jnp.uint32) % jnp.uint32(65521) + jnp.uint32(1)  # Adler's modulus
        sums.append(jnp.stack([jnp.sum(words), jnp.sum(words * weights)]))
    return finite, sums


def fingerprint(state: Any) -> tuple[bool, dict[str, list[int]]]:
    """(whether every floating array of `state` is finite, {array path: checksum}), computed on the devices."""
    finite, sums = jax.device_get(_fingerprint(state))
    keys = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
    return bool(finite), {key: [int(v) for v in np.asarray(s)] for key, s in zip(keys, sums)}


class Checkpointer:
    """Periodic async saves, keep-N, verified restore with fallback, and partial restores for evaluation."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, every_steps: int):
        self.workdir = _workdir_path(workdir)
        self.directory = self.workdir / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = False, data: dict | None = None) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it saved.

        `data` (JSON) is stored beside the state, e.g. the input stream's position. A state with a non-finite array
        raises NonFiniteStateError instead of being saved.
        """
        if not (force or self._manager.should_save(step)):
            return False
        finite, sums = fingerprint(state)
        if not finite:
            raise NonFiniteStateError(
                f"the state after step {step} holds non-finite values (NaN/Inf, or a norm that overflows); it was "
                f"not saved, {self.last_good()}. Lower config.optim.base_lr or use config.model.dtype='float32'.")
        meta = {"fingerprint": sums, "data": data or {}}
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def last_good(self) -> str:
        latest = self.latest_step()
        if latest is None:
            return f"no checkpoint was saved yet in {self.directory}"
        return f"the last good checkpoint is step {latest} in {self.directory}"

    def restore(self, like: Any, step: int | None = None) -> Any:
        """The saved state at `step` (default latest), placed like the arrays of `like`, verified."""
        step = self._manager.latest_step() if step is None else step
        return self._restore_verified(like, step)[0]

    def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data) of the newest readable checkpoint, or None where there is none.

        A checkpoint that fails to read, has another structure, or whose arrays do not match their fingerprint is
        skipped with one line saying why, and set aside once an older one was read; if none can be read, raises
        CheckpointError listing each step's reason.
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = self._restore_verified(like, step)
            except Exception as error:  # noqa: BLE001 - any read, structure or checksum error: try the next older
                reason = " ".join(str(error).split())[:300] or type(error).__name__
                metrics.log(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); trying an "
                            f"older one")
                failures.append((step, reason))
                continue
            for bad_step, _ in failures:
                self._set_aside(bad_step)
            return step, state, meta.get("data", {})
        if failures:
            listed = "; ".join(f"step {step}: {reason}" for step, reason in failures)
            raise CheckpointError(f"no readable checkpoint in {self.directory} ({listed}); move that directory "
                                  f"away to start the run over")
        return None

    def _restore_verified(self, like: Any, step: int) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        _, sums = fingerprint(restored["state"])
        saved = restored["meta"]["fingerprint"]
        damaged = [key for key in sums if saved.get(key) != sums[key]]
        if damaged or set(saved) != set(sums):
            raise CheckpointError(f"{len(damaged)} arrays do not match the checksums saved with them (first: "
                                  f"{(damaged or sorted(set(saved) ^ set(sums)))[0]})")
        return restored["state"], restored["meta"]

    def _set_aside(self, step: int) -> None:
        """Moves a checkpoint that could not be read out of the way (kept for inspection), so the run can save
        that step again."""
        if jax.process_index() == 0:
            target = self.workdir / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                (self.directory / str(step)).rename(target)
                where = f"moved to {target}"
            except OSError:  # object stores cannot rename a directory
                self._manager.delete(step)
                where = "deleted"
            metrics.log(f"checkpoint step {step} could not be read: {where}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"sslx set aside checkpoint {step}")
        self._manager.reload()

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

    def wait(self) -> None:
        """Blocks until every started save is committed."""
        self._manager.wait_until_finished()

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
