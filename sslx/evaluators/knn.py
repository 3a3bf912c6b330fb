"""Weighted k-nearest-neighbour classification on L2-normalised features (Wu et al. 2018).

Each of the k nearest training features votes for its class with weight exp(sim / T) (cosine similarity,
T = 0.07 by default). The training bank is split over the devices: each device ranks the queries against its
rows, the per-device top-k lists are all-gathered and merged, so no device holds the whole similarity matrix.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sslx import parallel
from sslx.evaluators.features import Encode, split_features
from sslx.parallel import BATCH_AXIS


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(mesh: Mesh, k: int):
    """(queries [Q,D], bank [N,D] sharded, labels [N] sharded) -> top-k (similarities, labels) [Q,k]."""

    def per_device(queries, bank, labels):
        sims = queries @ bank.T
        sims = jnp.where(labels[None, :] >= 0, sims, -jnp.inf)  # padding rows never win
        local_sims, local_idx = lax.top_k(sims, k)
        local_labels = labels[local_idx]
        all_sims = lax.all_gather(local_sims, BATCH_AXIS, axis=1, tiled=True)      # [Q, devices * k]
        all_labels = lax.all_gather(local_labels, BATCH_AXIS, axis=1, tiled=True)
        top_sims, top_idx = lax.top_k(all_sims, k)
        # Every device now holds the same answer; a leading device axis lets the caller take one copy.
        return top_sims[None], jnp.take_along_axis(all_labels, top_idx, axis=1)[None]

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS)),
                            out_specs=(P(BATCH_AXIS), P(BATCH_AXIS)))
    return jax.jit(lambda *args: jax.tree.map(lambda x: x[0], sharded(*args)))


def vote(sims: jax.Array, labels: jax.Array, num_classes: int, temperature: float) -> jax.Array:
    """Class scores [Q, C]: the sum of exp(sim / T) over the neighbours of each class."""
    weights = jnp.exp(sims / temperature)
    return jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(labels, num_classes))


def knn_classify(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, num_classes: int, mesh: Mesh, *, ks: Sequence[int] = (20, 200),
                 temperature: float = 0.07, query_chunk: int = 1024) -> dict[str, float]:
    """{'k{k}_top1', 'k{k}_top5'} for every k in `ks` (capped at the bank size)."""
    n = len(train_labels)
    k_max = min(max(ks), n)
    if k_max > -(-n // mesh.size):
        # Every device must hold at least k rows to return k candidates: pad the bank with empty rows.
        n_padded = parallel.round_up(k_max * mesh.size, mesh.size)
    else:
        n_padded = parallel.round_up(n, mesh.size)
    bank = np.zeros((n_padded, train_features.shape[1]), np.float32)
    bank[:n] = l2_normalize(train_features)
    bank_labels = np.full((n_padded,), -1, np.int32)
    bank_labels[:n] = train_labels
    bank = parallel.shard_batch(bank, mesh)
    bank_labels = parallel.shard_batch(bank_labels, mesh)
    nearest = _nearest(mesh, k_max)
    queries = l2_normalize(test_features).astype(np.float32)
    sims, labels = [], []
    for start in range(0, len(queries), query_chunk):
        chunk = parallel.replicate(queries[start:start + query_chunk], mesh)
        chunk_sims, chunk_labels = nearest(chunk, bank, bank_labels)
        sims.append(np.asarray(chunk_sims))
        labels.append(np.asarray(chunk_labels))
    sims, labels = np.concatenate(sims), np.concatenate(labels)
    truth = np.asarray(test_labels)[:, None]
    results = {}
    for k in ks:
        k_used = min(k, k_max)
        scores = vote(sims[:, :k_used], np.maximum(labels[:, :k_used], 0), num_classes, temperature)
        ranked = np.argsort(-np.asarray(scores), axis=1, kind="stable")
        results[f"k{k}_top1"] = float(np.mean(ranked[:, :1] == truth))
        results[f"k{k}_top5"] = float(np.mean(np.any(ranked[:, :5] == truth, axis=1)))
    return results


def check_knn_config(cfg: ml_collections.ConfigDict) -> None:
    if not cfg.ks or min(cfg.ks) <= 0:
        raise ValueError(f"config.knn.ks={cfg.ks} must be positive neighbour counts")
    if cfg.temperature <= 0:
        raise ValueError(f"config.knn.temperature={cfg.temperature} must be positive")


class KnnEvaluator:
    """kNN top-1/top-5 of an encoder's frozen features: the bank from the train split (its first
    `cfg.train_examples`), the queries from the eval split of `data_cfg`; `cfg` is a `knn_config()` section."""

    def __init__(self, cfg: ml_collections.ConfigDict, data_cfg, mesh: Mesh, batch_size: int, num_classes: int):
        check_knn_config(cfg)
        self.cfg, self.data_cfg, self.mesh, self.batch_size = cfg, data_cfg, mesh, batch_size
        self.num_classes = num_classes

    def features(self, encode: Encode) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((train features, labels), (eval features, labels))."""
        bank = split_features(encode, self.data_cfg, self.data_cfg.train_split, self.mesh, self.batch_size,
                              self.cfg.train_examples)
        return bank, split_features(encode, self.data_cfg, self.data_cfg.eval_split, self.mesh, self.batch_size)

    def score(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
        return knn_classify(*train, *test, self.num_classes, self.mesh, ks=tuple(self.cfg.ks),
                            temperature=self.cfg.temperature, query_chunk=self.cfg.query_chunk)

    def run(self, encode: Encode) -> dict[str, float]:
        return self.score(*self.features(encode))
