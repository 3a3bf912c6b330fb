"""What makes a training loop resumable on the same trajectory: the input streams' positions saved with each
checkpoint, the restore that reads them back, and the stop on SIGTERM/SIGINT with a checkpoint of the last step."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from sslx import metrics, parallel
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
