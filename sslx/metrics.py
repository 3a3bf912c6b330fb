"""Metric sinks (TensorBoard event files, JSON lines), the live progress line, and results.json."""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath

from sslx import paths, provenance


def is_chief() -> bool:
    """Only process 0 writes logs and files that are not checkpoints."""
    return jax.process_index() == 0


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tb`."""

    def __init__(self, workdir: paths.PathLike):
        self.workdir = paths.as_path(workdir)
        self._enabled = is_chief()
        if self._enabled:
            import tensorflow as tf  # input-pipeline dependency, reused for event files
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = tf.summary.create_file_writer(str(self.workdir / "tb"))
            self._jsonl = _append(self.workdir / "metrics.jsonl")

    def forget_after(self, step: int) -> None:
        """Drops metrics.jsonl rows after `step`: a resumed run logs them again, so each step keeps one row."""
        if not self._enabled:
            return
        self._jsonl.close()
        path = self.workdir / "metrics.jsonl"
        # In a bucket the appended file exists only once something was written to it.
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        rows = [line for line in text.splitlines() if _row_step(line) <= step]
        path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
        self._jsonl = _append(path)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        import tensorflow as tf
        with self._tb.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 [H, W, 3] picture as a TensorBoard image (sslx.plots draws them)."""
        if not self._enabled:
            return
        import tensorflow as tf
        with self._tb.as_default(step=step):
            tf.summary.image(name, image[None])

    def close(self) -> None:
        if self._enabled:
            self._tb.flush()
            self._jsonl.close()


def _append(path: epath.Path):
    """A text file opened for appending, local or in a bucket (tf.io.gfile: epath opens only as a context)."""
    import tensorflow as tf
    return tf.io.gfile.GFile(str(path), "a")


def _row_step(line: str) -> float:
    """A metrics.jsonl row's step; inf for a line cut short by a killed process (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def write_once(workdir: paths.PathLike, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one record to the workdir's metrics.jsonl and TensorBoard events (end-of-run evaluations)."""
    if scalars:
        writer = MetricWriter(workdir)
        writer.write(step, scalars)
        writer.close()


class Progress:
    """A progress line: step, loss, img/s over the last interval, ETA."""

    def __init__(self, total_steps: int, global_batch: int, first_step: int = 0):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def line(self, step: int, loss: float) -> str:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        seconds_per_step = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        img_per_s = self.global_batch / max(seconds_per_step, 1e-9)
        eta = format_seconds(seconds_per_step * (self.total_steps - step))
        return (f"step {step}/{self.total_steps}  loss {loss:.4f}  {img_per_s:,.0f} img/s  ETA {eta}")


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def log(message: str) -> None:
    if is_chief():
        print(message, file=sys.stdout, flush=True)


def write_results(workdir: paths.PathLike, results: Mapping[str, Any]) -> epath.Path:
    """`<workdir>/results.json`: the numbers a stage reports, read by the next stage and outside checks."""
    path = paths.as_path(workdir) / "results.json"
    if is_chief():
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
        clean["provenance"] = provenance.collect()
        path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
