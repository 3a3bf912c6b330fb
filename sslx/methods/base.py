"""The method interface: everything a self-supervised method adds to the method-agnostic loop.

A method owns its network (encoder + heads), the loss it computes per replica, the extra state it
carries between steps (EMA target params, a queue, ...) and what happens after the optimizer update.
The pretraining loop only calls the methods below.
"""
from __future__ import annotations

import abc
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from sslx import models
from sslx.losses import check_labels, masked_mean, softmax_cross_entropy
from sslx.parallel import BATCH_AXIS

Metrics = dict[str, jax.Array]


class SSLNetwork(nn.Module):
    """Encoder, optional projection head and predictor, optional linear probe on stop_gradient(features)."""
    encoder: nn.Module
    head: nn.Module | None = None
    predictor: nn.Module | None = None   # BYOL / SimSiam / MoCo v3: p = q(z), on top of the head
    num_classes: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> dict[str, Any]:
        features = self.encoder(images, train=train)
        out = {"features": features}
        if self.head is not None:
            out["z"], out["hiddens"] = self.head(features, train=train)
        if self.predictor is not None:
            out["p"], _ = self.predictor(out["z"], train=train)
        if self.num_classes:
            out["probe_logits"] = models.LinearClassifier(self.num_classes, name="probe")(
                lax.stop_gradient(features))
        return out


def compute_dtype(model_cfg: ml_collections.ConfigDict):
    return jnp.bfloat16 if model_cfg.dtype == "bfloat16" else jnp.float32


def bn_axis(model_cfg: ml_collections.ConfigDict, axis_name: str | None) -> str | None:
    """Global BN reduces statistics over the replica axis; per-replica BN does not."""
    return axis_name if model_cfg.bn == "global" else None


def build_encoder(model_cfg: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    encoder = models.build_encoder(
        model_cfg.name, width=model_cfg.width, cifar_stem=model_cfg.cifar_stem, sk_ratio=model_cfg.sk_ratio,
        bn_axis_name=bn_axis(model_cfg, axis_name), bn_momentum=model_cfg.bn_momentum,
        dtype=compute_dtype(model_cfg), tf_pooling=model_cfg.get("tf_pooling", False),
        zero_init_residual=model_cfg.get("zero_init_residual", True))
    # Only each block's input is kept for the backward pass, which recomputes the block's insides: for
    # about one more forward pass. Configs saved before config.model.remat (or zero_init_residual) lack the key.
    return encoder.clone(block=nn.remat(encoder.block)) if model_cfg.get("remat", False) else encoder


def build_head(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    head_cfg = config.head
    head = models.make_head(
        head_cfg.version, hidden_dim=head_cfg.hidden_dim if head_cfg.hidden_dim > 0 else None,
        out_dim=head_cfg.out_dim, use_bn=head_cfg.use_bn,
        # Without BN the last layer keeps its bias (MoCo v2 and SupCon's Dense-ReLU-Dense).
        final_bn=head_cfg.use_bn and head_cfg.final_bn,
        bn_axis_name=bn_axis(config.model, axis_name), bn_momentum=config.model.bn_momentum,
        dtype=compute_dtype(config.model))
    return head.clone(num_layers=head_cfg.num_layers) if head_cfg.num_layers > 0 else head


def build_predictor(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """BYOL's predictor q: an MLP from the projection back to its own width, BN on hidden layers only."""
    pred_cfg = config.predictor
    return models.ProjectionHead(
        num_layers=pred_cfg.num_layers, hidden_dim=pred_cfg.hidden_dim if pred_cfg.hidden_dim > 0 else None,
        out_dim=config.head.out_dim, final_bn=False, bn_axis_name=bn_axis(config.model, axis_name),
        bn_momentum=config.model.bn_momentum, dtype=compute_dtype(config.model))


def check_batch(batch: dict[str, jax.Array]) -> None:
    """The per-replica batch every method reads: two float views [n, H, W, 3] of one shape and, where the
    online probe or SupCon needs them, int labels [n] (checked at trace time, so a pipeline or view-maker change
    that breaks it fails before the first step)."""
    views = [batch["view1"], batch["view2"]]
    chex.assert_rank(views, 4)
    chex.assert_equal_shape(views)
    chex.assert_type(views, float)
    chex.assert_axis_dimension(batch["view1"], 3, 3)
    if "label" in batch:
        check_labels(batch["label"], batch["view1"].shape[0])


class Method(abc.ABC):
    """Base class; subclasses register themselves in sslx.methods.METHODS."""
    has_predictor = False   # whether config.predictor applies

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, total_steps: int):
        self.config = config
        # -1: unlabelled data (a flat image folder, a tfrecord without labels.txt): nothing for a probe to learn.
        self.num_classes = max(num_classes, 0) if config.probe.online else 0
        self.total_steps = total_steps   # for schedules inside the method (EMA momentum, ...)
        self.validate()

    def validate(self) -> None:
        """Method/option mismatches, raised as one-line ValueErrors naming the config key."""
        layers = self.config.predictor.num_layers
        if self.has_predictor and layers < 1:
            raise ValueError(f"config.predictor.num_layers={layers}: {self.config.method} needs a predictor (>= 1).")
        if not self.has_predictor and layers > 0:
            raise ValueError(f"config.predictor.num_layers={layers}: {self.config.method} has no predictor; set 0.")

    @abc.abstractmethod
    def network(self, axis_name: str | None) -> nn.Module:
        """The trained network; `axis_name` binds global BN inside the data-parallel step."""

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, extra) for a sample batch, initialised outside any mesh."""
        variables = self.network(None).init(rng, images, train=True)
        return variables["params"], variables.get("batch_stats", {}), self.init_extra(variables)

    def init_extra(self, variables: Any) -> Any:
        """Extra state carried in the train state (EMA targets, queues); none by default."""
        del variables
        return {}

    @abc.abstractmethod
    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        """Per-replica loss (inside shard_map over BATCH_AXIS) -> (loss, (batch_stats, metrics, outputs)).

        batch_stats are the trained network's updated BN statistics (the loop averages them over
        replicas); `outputs` (no gradient) go to `after_update`: keys to enqueue, a target network's
        BN statistics, ...
        """

    def forward(self, params: Any, batch_stats: Any, images: jax.Array) -> tuple[dict[str, Any], Any]:
        """The trained network in train mode on one batch of views -> (outputs, updated BN statistics).

        Methods that run each view separately (BYOL, SimSiam, MoCo, ...) call it once per view, so BN
        normalises each view on its own, as in their reference code.
        """
        out, updates = self.network(BATCH_AXIS).apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"])
        return out, updates["batch_stats"]

    def embed(self, params: Any, batch_stats: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        """Per-example network outputs of a (micro-)batch in train mode, and the updated BN statistics.

        With `loss_from_embeddings` this splits `loss` for GradCache (config.micro_batch_size > 0): every
        output leaf leads with the batch axis, so micro-batch outputs concatenate to the batch's.
        """
        raise ValueError(f"config.micro_batch_size > 0 needs a method with embed/loss_from_embeddings; "
                         f"{self.config.method} has none: set config.micro_batch_size=0.")

    def loss_from_embeddings(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Per-replica loss of the whole local batch from the concatenated outputs of `embed`."""
        raise ValueError(f"config.micro_batch_size > 0 needs a method with embed/loss_from_embeddings; "
                         f"{self.config.method} has none: set config.micro_batch_size=0.")

    def after_update(self, state: Any, outputs: Any) -> Any:
        """Runs per replica after the optimizer update (EMA, enqueue); returns the new extra state.

        `outputs` is what `loss` returned for it (keys to enqueue, target BN statistics, ...); the
        returned extra state must be the same on every replica (gather or pmean what `outputs` holds).
        """
        del outputs
        return state.extra

    def probe_loss(self, out: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Online linear probe on frozen features: its own loss term, no gradient into the encoder."""
        if "probe_logits" not in out:
            return jnp.zeros((), jnp.float32), {}
        logits = out["probe_logits"]
        labels = batch["label"]
        # Unlabelled examples (label -1, e.g. STL-10's unlabelled split) do not train the probe; the
        # mean is over the labelled rows of the global batch, however unevenly replicas hold them.
        mask = (labels >= 0).astype(jnp.float32)
        safe = jnp.maximum(labels, 0)
        loss = softmax_cross_entropy(logits, safe, mask, axis_name=BATCH_AXIS)
        acc = masked_mean((jnp.argmax(logits, -1) == safe).astype(jnp.float32), mask, BATCH_AXIS)
        return loss, {"probe_loss": loss, "probe_top1": acc}

    def encode(self, params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
        """Encoder features in eval mode (running BN statistics); what the evaluators consume."""
        encoder = build_encoder(self.config.model, None)
        return encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                             images, train=False)

