"""The one training loop of every stage, and what makes it resumable on the same trajectory: the input streams'
positions saved with each checkpoint, the restore that reads them back, the stop on SIGTERM/SIGINT with a checkpoint
of the last step, and the check that never saves a non-finite state."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sslx import metrics, parallel, paths
from sslx.checkpoint import Checkpointer
from sslx.data.pipeline import START, InputStream, Position
from sslx.workdir import Preempted, StopSignals


class Feed:
    """The step inputs of a loop: named input streams, and `combine` that turns one batch of each into what the
    step takes (e.g. sharded arrays). Knows every stream's position and the corrupt records skipped."""

    def __init__(self, streams: dict[str, InputStream], combine: Callable[[dict[str, dict]], Any],
                 skipped_before: int = 0):
        self.streams = streams
        self._combine = combine
        self.skipped_records = skipped_before  # all processes, as of the last checkpoint_data()
        self._skipped_before = skipped_before

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> Any:
        return self._combine({name: next(stream) for name, stream in self.streams.items()})

    def checkpoint_data(self) -> dict:
        """{'input': {stream: [position of each process]}, 'skipped_records': summed over processes}: JSON that
        every process computes alike (the gather is collective), saved beside the state."""
        local = np.array([[*s.position, s.skipped] for s in self.streams.values()], np.int64)
        every = np.asarray(multihost_utils.process_allgather(local)) if jax.process_count() > 1 else local[None]
        self.skipped_records = self._skipped_before + int(every[:, :, 2].sum())
        return {"input": {name: every[:, i, :2].tolist() for i, name in enumerate(self.streams)},
                "skipped_records": self.skipped_records}


def stream_start(data: dict, name: str) -> Position:
    """This process's saved position of stream `name` in a checkpoint's data; START for a fresh run."""
    positions = data.get("input", {}).get(name)
    if positions is None:
        return START
    if len(positions) != jax.process_count():
        metrics.log(f"the checkpoint's input positions are for {len(positions)} processes, this run has "
                    f"{jax.process_count()}: the data order restarts (the trajectory differs from here on)")
        return START
    return tuple(positions[jax.process_index()])


def restore(checkpointer: Checkpointer, state: Any, writer: metrics.MetricWriter) -> tuple[int, Any, dict]:
    """(step to continue after, state, checkpoint data) from the newest readable checkpoint, or (0, state, {})."""
    found = checkpointer.restore_latest(state)
    start, state, data = found if found else (0, state, {})
    parallel.check_same_on_all_processes(str(start), "the step to resume from")
    if start:
        metrics.log(f"resumed from step {start} in {checkpointer.directory}")
    writer.forget_after(start)
    return start, state, data


def stop_here(signals: StopSignals, checkpointer: Checkpointer, step: int, state: Any, feed: Feed) -> None:
    """After a SIGTERM/SIGINT: saves this step, waits until it is committed, and raises Preempted."""
    if not signals.requested(step):
        return
    if step not in checkpointer.all_steps():
        checkpointer.save(step, state, force=True, data=feed.checkpoint_data())
    checkpointer.wait()
    raise Preempted(f"stopped by {signals.signal_name} after step {step}: its checkpoint is saved in "
                    f"{checkpointer.directory}; rerun the same command to continue from it")


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(step: int, loss: float, checkpointer: Checkpointer, hint: str) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"non-finite loss ({loss}) at step {step}; stopped without saving it, "
                                 f"{checkpointer.last_good()}. {hint}")


def train_loop(state: Any, step_fn: Callable[[Any, Any, int], tuple[Any, dict]],
               feed_from: Callable[[int, dict], Feed], checkpointer: Checkpointer, writer: metrics.MetricWriter,
               cfg: ml_collections.ConfigDict, *, total_steps: int, hint: str,
               evaluate: Callable[[Any], dict] | None = None, evaluate_every: int = 0,
               describe: Callable[[dict], str] = lambda scalars: "") -> tuple[Any, dict]:
    """Runs (or resumes) a stage to `total_steps`; returns the final state and the last logged scalars (with
    'skipped_records': the corrupt records skipped in all processes).

    Resumes from the newest readable checkpoint, input position included; logs progress lines and metrics every
    `cfg.log_every_steps`; stops on a non-finite loss, naming the step and `hint` (which key to change), before
    saving it; runs `evaluate(state)` every `evaluate_every` steps (> 0) and logs its metrics; saves every
    `cfg.checkpoint_every_steps` and at the end; on SIGTERM/SIGINT saves the step and raises Preempted.
    `step_fn(state, batch, step) -> (state, metrics)`; `feed_from(start_step, saved data)` gives the batches;
    `cfg` is the stage's config section (batch_size, log_every_steps, checkpoint_every_steps).
    """
    start, state, saved = restore(checkpointer, state, writer)
    progress = metrics.Progress(total_steps, cfg.batch_size, first_step=start)
    feed = feed_from(start, saved)
    last: dict[str, float] = {}
    pending: tuple[int, jax.Array] | None = None
    with StopSignals() as signals:
        for step in range(start + 1, total_steps + 1):
            state, step_metrics = step_fn(state, next(feed), step)
            # Checking the previous step's loss keeps one step in flight while still naming the exact step.
            if pending is not None:
                check_finite(pending[0], float(pending[1]), checkpointer, hint)
            pending = (step, step_metrics["loss"])
            if step % cfg.log_every_steps == 0 or step == total_steps:
                last = metrics.to_python(step_metrics)
                check_finite(step, last["loss"], checkpointer, hint)
                writer.write(step, last)
                metrics.log(progress.line(step, last["loss"]) + describe(last))
            if evaluate is not None and evaluate_every > 0 and step % evaluate_every == 0:
                writer.write(step, evaluate(state))
            if step % cfg.checkpoint_every_steps == 0 or step == total_steps:
                check_finite(step, float(step_metrics["loss"]), checkpointer, hint)
                checkpointer.save(step, state, force=step == total_steps, data=feed.checkpoint_data())
            stop_here(signals, checkpointer, step, state, feed)
    last["skipped_records"] = feed.skipped_records
    return state, last


def train_with_sinks(workdir: paths.PathLike, cfg: ml_collections.ConfigDict,
                     train: Callable[[Checkpointer, metrics.MetricWriter], Any]) -> Any:
    """`train(checkpointer, writer)` with the stage's checkpointer (config section `cfg`: keep_checkpoints,
    checkpoint_every_steps) and metric writer, both closed whatever happens (closing waits for the last save)."""
    checkpointer = Checkpointer(workdir, keep=cfg.keep_checkpoints, every_steps=cfg.checkpoint_every_steps)
    writer = metrics.MetricWriter(workdir)
    try:
        return train(checkpointer, writer)
    finally:
        checkpointer.close()
        writer.close()
