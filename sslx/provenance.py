"""What produced a workdir, recorded in its config.json and results.json: code, library versions, hardware."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import pathlib
import platform
import subprocess
from typing import Any

import jax

import sslx

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "tensorflow-cpu",
             "tensorflow-datasets")


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout sslx runs from ("+dirty" when tracked files differ from it); None when installed."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changed else "")


def collect() -> dict[str, Any]:
    """sslx version and commit, library versions, Python, and the devices and processes of this run."""
    versions = {name: v for name in LIBRARIES if (v := _installed_version(name)) is not None}
    return {"sslx": sslx.__version__, "git_commit": git_commit(), "python": platform.python_version(),
            "versions": versions, "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count()}


def config_json(config) -> str:
    """A workdir's config.json: the resolved config, plus a `provenance` section (not a config key)."""
    return json.dumps({**json.loads(config.to_json_best_effort()), "provenance": collect()}, indent=2) + "\n"
