"""The workdir contract every training stage keeps.

One writer at a time (a lock the OS releases when its process dies, so a crashed run never leaves it stuck);
config.json describes the checkpoints beside it, so a rerun whose config differs stops before writing anything;
rerunning a finished workdir reports it and exits 0; SIGTERM/SIGINT end a run with a checkpoint of the last step.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import signal
import socket
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import ml_collections
from jax.experimental import multihost_utils

from sslx import metrics, paths, provenance

LOCK_FILE = ".lock"
# Keys a rerun may change: how long to train, and how this launch's processes find each other.
RUN_LENGTH_KEYS = ("total_steps", "epochs")
LAUNCH_KEYS = ("distributed",)


class WorkdirError(ValueError):
    """The workdir cannot be used as given (a file, unwritable, in use, or describes another run)."""


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint of its last step; rerunning continues from it."""


def check_writable(workdir: str | os.PathLike) -> None:
    """One line naming the problem when `workdir` is a file, lies under a file, or cannot be written."""
    if paths.is_remote(workdir):
        return
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} is a file: pass a directory (it is created if missing)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise WorkdirError(f"--workdir {path} lies under the file {parent}: pass a directory path")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(f"--workdir {path} cannot be written ({error.strerror}): pass a writable directory"
                           ) from None


class Lock:
    """An exclusive flock on `<workdir>/.lock`, held by the chief process for the run's lifetime.

    Object stores have no locks: a gs:// workdir is not locked (one line says so)."""

    def __init__(self, workdir: str | os.PathLike):
        self._file = None
        if not metrics.is_chief():
            return
        if paths.is_remote(workdir):
            metrics.log(f"{workdir} is remote and cannot be locked: make sure one run at a time uses it")
            return
        path = pathlib.Path(workdir) / LOCK_FILE
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise WorkdirError(f"--workdir {workdir} is in use by {holder}: wait for that run to end (or stop it), "
                               f"or pass another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     f" ({' '.join(sys.argv[:1] + sys.argv[1:4])} ...)\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def config_changes(saved: dict, config: dict, may_change: Iterable[str]) -> list[str]:
    """'key (saved -> new)' for every key whose value differs, outside the `may_change` keys and sections."""
    allowed = tuple(may_change)
    old, new = _flatten(saved), _flatten(config)
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == a or key.startswith(a + ".") for a in allowed):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes.append(f"{key} ({old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r})")
    return changes


def check_same_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                      may_change: Iterable[str] = RUN_LENGTH_KEYS) -> None:
    """Stops a rerun whose config differs from the workdir's config.json (which describes its checkpoints)."""
    path = paths.as_path(workdir) / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.pop("provenance", None)   # what ran it, not what it runs
    changes = config_changes(saved, json.loads(config.to_json_best_effort()), (*may_change, *LAUNCH_KEYS))
    if changes:
        raise WorkdirError(f"the config differs from {path}, which describes the checkpoints there, in: "
                           f"{'; '.join(changes)}. Rerun with the same recipe and overrides (only "
                           f"{', '.join(may_change)} may change) or pass another --workdir")


@contextlib.contextmanager
def open_run(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
             may_change: Iterable[str] = RUN_LENGTH_KEYS) -> Iterator[None]:
    """Checks the workdir, takes its lock, checks a rerun's config, then writes config.json; releases at exit.

    Nothing is written before every check passed."""
    check_writable(workdir)
    lock = Lock(workdir)
    try:
        check_same_config(workdir, config, may_change)
        path = paths.as_path(workdir) / "config.json"
        text = provenance.config_json(config)
        if metrics.is_chief() and not (path.exists() and path.read_text(encoding="utf-8") == text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        yield
    finally:
        lock.release()


def finished_results(workdir: str | os.PathLike, steps_key: str, total_steps: int) -> dict | None:
    """The results.json of a run that already reached `total_steps` (its `steps_key` field), else None."""
    path = paths.as_path(workdir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    if results.get(steps_key) != total_steps:
        return None
    metrics.log(f"{workdir} is finished ({total_steps} steps); its results are in {path}. Nothing to do: raise "
                f"the run length or pass another --workdir to train more")
    return results


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step (`requested(step)`), instead of killing it.

    With several processes, JAX's preemption sync point makes every process stop at the same step (SIGTERM from
    the scheduler reaches them at different times); SIGINT then keeps its default meaning."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1

    def __enter__(self) -> "StopSignals":
        for sig in () if self._multi else (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if self._multi and multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "a preemption notice"
            return True
        return self.signal_name is not None


def run_unless_finished(run: Callable[[ml_collections.ConfigDict, str], Any], config: ml_collections.ConfigDict,
                        workdir: str | os.PathLike, runner: str) -> dict:
    """A runner's stage: skipped when `workdir` holds results.json, else run (resuming from its checkpoints);
    returns the stage's results.json."""
    results_path = paths.as_path(workdir) / "results.json"
    if results_path.is_file():
        metrics.log(f"{runner}: {workdir} is done; skipping it")
    else:
        metrics.log(f"{runner}: running {workdir}")
        run(config, str(workdir))
    return json.loads(results_path.read_text(encoding="utf-8"))
