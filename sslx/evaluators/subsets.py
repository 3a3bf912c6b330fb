"""Labelled subsets of a training split for semi-supervised evaluation, and held-out validation splits.

Indices are positions in the split's fixed read order (`data.load_split` without shuffling), so a subset is
reproducible from (data set, split, fraction, seed); it is written next to the results with the examples' ids.
"""
from __future__ import annotations

import json

import numpy as np
from etils import epath

from sslx import metrics, paths


def check_fraction(fraction: float, key: str) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{key}={fraction} must lie in (0, 1]: 0.01 for 1% of the labels, 1.0 for all")


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction x class count) examples of every class (at least one), drawn with `seed`."""
    check_fraction(fraction, "label fraction")
    if fraction == 1.0:
        return np.arange(len(labels))
    if np.any(labels < 0):
        raise ValueError("the training split has unlabelled examples (label -1): a labelled subset needs labels")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def split_off(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation): a class-balanced `fraction` of `indices` held out, e.g. for a learning-rate sweep."""
    held = indices[balanced_subset(labels[indices], fraction, seed)]
    return np.setdiff1d(indices, held), held


def write_subset(workdir: paths.PathLike, indices: np.ndarray, ids: np.ndarray, **description) -> epath.Path:
    """`<workdir>/label_subset.json`: which training examples carried labels (read-order indices and the
    examples' own ids), to reproduce or audit a run."""
    path = paths.as_path(workdir) / "label_subset.json"
    if metrics.is_chief():
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**description, "num_examples": int(len(indices)), "ids": [str(i) for i in ids],
                  "indices": [int(i) for i in indices]}
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path
