"""MoCo v2 (Chen et al. 2020, arXiv:2003.04297) and MoCo v3 (Chen, Xie & He 2021), ResNet versions.

v2: the query encoder's projection of view 1 against the momentum key encoder's projection of view
2 and a queue of earlier keys; constant momentum. v3: no queue, both directions, negatives are the
keys of the global batch, a predictor on the query side, momentum raised to 1 by a cosine.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from sslx.losses import embedding_std, info_nce_queue, l2_normalize, moco_v3_contrastive
from sslx.methods.base import Metrics, views
from sslx.methods.target import MomentumTargetMethod, cosine_momentum
from sslx.parallel import BATCH_AXIS


def shuffled_apply(fn: Callable[[jax.Array], tuple[jax.Array, Any]], images: jax.Array, rng: jax.Array,
                   axis_name: str) -> tuple[jax.Array, Any]:
    """Shuffle BN (MoCo, sec. 3.3): `fn` runs on a random re-partition of the global batch.

    Every replica gathers the batch, takes its slice of one permutation (`rng` must be the same on
    all replicas), and the outputs are gathered and un-permuted, so row i of the result is still
    fn's output for images[i] while per-replica BN saw other examples than the query encoder.
    """
    n = images.shape[0]
    offset = lax.axis_index(axis_name) * n
    everything = lax.all_gather(images, axis_name, axis=0, tiled=True)
    perm = jax.random.permutation(rng, everything.shape[0])
    out, aux = fn(everything[lax.dynamic_slice_in_dim(perm, offset, n)])
    permuted = lax.all_gather(out, axis_name, axis=0, tiled=True)          # row j: output for example perm[j]
    restored = jnp.zeros_like(permuted).at[perm].set(permuted)
    return lax.dynamic_slice_in_dim(restored, offset, n), aux


class MoCo(MomentumTargetMethod):
    """What MoCo v2 and v3 share: the section config.moco."""
    config_section = "moco"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.momentum = 0.999            # key-encoder EMA rate (v2 constant; v3 its start, raised to 1 by a cosine)
        c.queue_size = 65536          # v2: negatives kept; a multiple of batch_size
        c.shuffle_bn = False          # v2: shuffle the key batch across replicas (needs model.bn='replica')
        return c


class MoCoV2(MoCo):
    name = "mocov2"

    def validate(self) -> None:
        super().validate()
        moco, batch = self.config.moco, self.config.batch_size
        if moco.queue_size <= 0 or moco.queue_size % batch:
            raise ValueError(f"config.moco.queue_size={moco.queue_size} must be a positive multiple of "
                             f"config.batch_size={batch} (whole batches of keys are enqueued).")
        if moco.shuffle_bn and self.config.model.bn != "replica":
            raise ValueError("config.moco.shuffle_bn=True needs config.model.bn='replica' (global BN has no "
                             "per-replica statistics to shuffle).")

    def momentum(self, step: jax.Array) -> jax.Array:
        return jnp.asarray(self.config.moco.momentum, jnp.float32)

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        params, batch_stats, extra = super().init(rng, images)
        shape = (self.config.moco.queue_size, self.config.head.out_dim)
        # MoCo starts from random unit vectors; they are all replaced after queue_size / batch_size steps.
        extra["queue"] = l2_normalize(jax.random.normal(jax.random.fold_in(rng, 1), shape))
        return params, batch_stats, extra

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        view1, view2 = views(batch)
        out, stats = self.forward(params, batch_stats, view1, rng)
        encode_keys = lambda images: self.target_forward(extra, extra["target_batch_stats"], images)  # noqa: E731
        if self.config.moco.shuffle_bn:
            # One permutation for all replicas: from the seed and step, not the per-replica rng.
            shared = jax.random.fold_in(jax.random.key(self.config.seed), step)
            keys, target_stats = shuffled_apply(encode_keys, view2, shared, BATCH_AXIS)
        else:
            keys, target_stats = encode_keys(view2)
        keys = l2_normalize(keys)
        contrastive = info_nce_queue(out["z"], keys, extra["queue"], temperature=self.config.loss.temperature)
        probe_loss, probe_metrics = self.probe_loss(out, batch)
        metrics = {"contrastive_loss": contrastive.loss, "contrastive_acc": contrastive.accuracy,
                   "contrastive_entropy": contrastive.entropy, "z_std": embedding_std(out["z"]), **probe_metrics}
        return contrastive.loss + probe_loss, (stats, metrics, {"target_batch_stats": target_stats, "keys": keys})

    def after_update(self, state: Any, outputs: Any) -> Any:
        # Enqueue the global batch's keys (replica order = batch order) over the oldest ones: the same
        # keys at the same place on every replica ('invarying' tells shard_map the result is replicated).
        keys = lax.all_gather(outputs["keys"], BATCH_AXIS, axis=0, tiled=True, to="invarying")
        start = (state.step - 1) * keys.shape[0] % self.config.moco.queue_size
        queue = lax.dynamic_update_slice_in_dim(state.extra["queue"], keys, start, axis=0)
        return {**super().after_update(state, outputs), "queue": queue}


class MoCoV3(MoCo):
    name = "mocov3"
    has_predictor = True

    def momentum(self, step: jax.Array) -> jax.Array:
        return cosine_momentum(step, self.total_steps, self.config.moco.momentum)

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1, jax.random.fold_in(rng, 1))
        out2, stats = self.forward(params, stats, view2, jax.random.fold_in(rng, 2))
        k1, target_stats = self.target_forward(extra, extra["target_batch_stats"], view1)
        k2, target_stats = self.target_forward(extra, target_stats, view2)
        t = self.config.loss.temperature
        forward = moco_v3_contrastive(out1["p"], k2, temperature=t, axis_name=BATCH_AXIS)
        backward = moco_v3_contrastive(out2["p"], k1, temperature=t, axis_name=BATCH_AXIS)
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        metrics = {"contrastive_loss": forward.loss + backward.loss,
                   "contrastive_acc": (forward.accuracy + backward.accuracy) / 2,
                   "contrastive_entropy": (forward.entropy + backward.entropy) / 2,
                   "momentum": self.momentum(step), "z_std": embedding_std(out1["z"]), **probe_metrics}
        return forward.loss + backward.loss + probe_loss, (stats, metrics, {"target_batch_stats": target_stats})
