"""Frozen-encoder features for a whole split, computed data-parallel over the mesh."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sslx.parallel import shard_batch


def extract_features(encode: Callable[[jax.Array], jax.Array], batches: Iterable[dict],
                     mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Runs `encode(images)` on every batch (split over devices) and keeps the unpadded rows.

    `batches` are this process's eval batches with 'image', 'label' and 'mask' (0 marks padding). Every
    process gets the features of the whole split: rows computed on other hosts are gathered.
    """
    encode = jax.jit(encode)
    features, labels = [], []
    for batch in batches:
        sharded = shard_batch({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        batch_features, batch_labels, mask = multihost_utils.process_allgather(
            (encode(sharded["image"]), sharded["label"], sharded["mask"]), tiled=True)
        keep = np.asarray(mask) > 0
        features.append(np.asarray(batch_features)[keep])
        labels.append(np.asarray(batch_labels)[keep])
    return np.concatenate(features), np.concatenate(labels)
