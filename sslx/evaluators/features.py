"""Frozen-encoder features for a whole split, computed data-parallel over the mesh."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from sslx.parallel import shard_batch


def extract_features(encode: Callable[[jax.Array], jax.Array], batches: Iterable[dict],
                     mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Runs `encode(images)` on every batch (split over devices) and keeps the unpadded rows.

    `batches` are this process's eval batches with 'image', 'label' and 'mask' (0 marks padding).
    """
    encode = jax.jit(encode)
    features, labels = [], []
    for batch in batches:
        batch_features = np.asarray(encode(shard_batch(batch["image"], mesh)))
        keep = np.asarray(batch["mask"]) > 0
        features.append(batch_features[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(features), np.concatenate(labels)
