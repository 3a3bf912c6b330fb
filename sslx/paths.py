"""One path type for local folders and buckets: etils.epath, which orbax already uses.

pathlib folds `gs://bucket/run` into a local folder `gs:/bucket/run`; epath keeps the URL and reaches it through
TensorFlow's filesystems (tf.io.gfile, which tf.data reads through as well), so workdirs, config.json,
results.json, metrics, TensorBoard events, label subsets, teacher logits and TFRecord data can all live in a
bucket. Local paths behave as with pathlib.
"""
from __future__ import annotations

import io
import os

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """A URL such as gs://bucket/dir (any scheme epath knows), not a local path."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    return epath.Path(path)


def absolute(path: PathLike) -> epath.Path:
    """Local paths made absolute (they then mean the same after a chdir, and orbax requires it); URLs as given
    (epath's own `absolute()` would join them to the working directory)."""
    return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


def resolve_against(path: str, base: PathLike) -> str:
    """A relative local path made relative to `base` (e.g. a recipe's data path to the repository root); absolute
    paths, URLs and "" unchanged."""
    if path and not is_remote(path) and not os.path.isabs(path):
        return os.path.abspath(os.path.join(os.fspath(base), path))
    return path


def save_array(path: PathLike, array: np.ndarray) -> None:
    """An .npy file, local or remote."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.save(f, array)


def load_array(path: PathLike) -> np.ndarray:
    """An .npy file: memory-mapped when local (teacher logits of ImageNet are 5 GB), read whole from a bucket."""
    if not is_remote(path):
        return np.load(os.fspath(path), mmap_mode="r")
    return np.load(io.BytesIO(as_path(path).read_bytes()))
