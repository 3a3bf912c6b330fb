"""Frozen-encoder features for a whole split, computed data-parallel over the mesh: the one feature extraction of
every evaluator and evaluation stage."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sslx import data, parallel

Encode = Callable[[jax.Array], jax.Array]   # images [b, H, W, 3] -> features [b, D] (or logits)


def extract_features(encode: Encode, batches: Iterable[dict], mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Runs `encode(images)` on every batch (split over devices) and keeps the unpadded rows.

    `batches` are this process's eval batches with 'image', 'label' and 'mask' (0 marks padding). Every
    process gets the features of the whole split: rows computed on other hosts are gathered.
    """
    encode = jax.jit(encode)
    features, labels = [], []
    for batch in batches:
        sharded = parallel.shard_batch({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        batch_features, batch_labels, mask = multihost_utils.process_allgather(
            (encode(sharded["image"]), sharded["label"], sharded["mask"]), tiled=True)
        keep = np.asarray(mask) > 0
        features.append(np.asarray(batch_features)[keep])
        labels.append(np.asarray(batch_labels)[keep])
    return np.concatenate(features), np.concatenate(labels)


def split_features(encode: Encode, data_cfg, split: str, mesh: Mesh, batch_size: int,
                   max_examples: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """`encode(images)` for the first `max_examples` (-1: all) examples of `split` in its read order, with labels
    (centre crops, no augmentation); `batch_size` is global, rounded up to a multiple of the device count."""
    local_batch = parallel.round_up(batch_size, mesh.size) // jax.process_count()
    batches = data.eval_iterator(data_cfg, split, local_batch=local_batch, image_size=data_cfg.image_size,
                                 max_examples=max_examples, process_index=jax.process_index(),
                                 process_count=jax.process_count())
    return extract_features(encode, batches, mesh)
