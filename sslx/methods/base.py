"""The method interface: everything a self-supervised method adds to the method-agnostic loop.

A method owns its network (encoder + heads), the loss it computes per replica, the extra state it
carries between steps (EMA target params, a queue, ...) and what happens after the optimizer update.
The pretraining loop only calls the methods below.
"""
from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from sslx import models
from sslx.losses import softmax_cross_entropy

Metrics = dict[str, jax.Array]


class SSLNetwork(nn.Module):
    """Encoder, optional projection head, optional linear probe on stop_gradient(features)."""
    encoder: nn.Module
    head: nn.Module | None = None
    num_classes: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> dict[str, Any]:
        features = self.encoder(images, train=train)
        out = {"features": features}
        if self.head is not None:
            out["z"], out["hiddens"] = self.head(features, train=train)
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
    return models.build_encoder(
        model_cfg.name, width=model_cfg.width, cifar_stem=model_cfg.cifar_stem, sk_ratio=model_cfg.sk_ratio,
        bn_axis_name=bn_axis(model_cfg, axis_name), bn_momentum=model_cfg.bn_momentum,
        dtype=compute_dtype(model_cfg))


def build_head(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    head_cfg = config.head
    return models.make_head(
        head_cfg.version, num_layers=head_cfg.num_layers if head_cfg.num_layers > 0 else None,
        hidden_dim=head_cfg.hidden_dim, out_dim=head_cfg.out_dim,
        bn_axis_name=bn_axis(config.model, axis_name), bn_momentum=config.model.bn_momentum,
        dtype=compute_dtype(config.model))


class Method(abc.ABC):
    """Base class; subclasses register themselves in sslx.methods.METHODS."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        self.config = config
        self.num_classes = num_classes if config.probe.online else 0

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
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics]]:
        """Per-replica loss (inside shard_map over BATCH_AXIS) -> (loss, (new batch_stats, metrics))."""

    def after_update(self, state: Any) -> Any:
        """Runs after the optimizer update (EMA, enqueue); returns the new extra state."""
        return state.extra

    def probe_loss(self, out: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Online linear probe on frozen features: its own loss term, no gradient into the encoder."""
        if "probe_logits" not in out:
            return jnp.zeros((), jnp.float32), {}
        logits = out["probe_logits"]
        labels = batch["label"]
        # Unlabelled examples (label -1, e.g. STL-10's unlabelled split) do not train the probe.
        mask = (labels >= 0).astype(jnp.float32)
        safe = jnp.maximum(labels, 0)
        loss = softmax_cross_entropy(logits, safe, mask)
        acc = jnp.sum((jnp.argmax(logits, -1) == safe) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, {"probe_loss": loss, "probe_top1": acc}

    def encode(self, params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
        """Encoder features in eval mode (running BN statistics); what the evaluators consume."""
        encoder = build_encoder(self.config.model, None)
        return encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                             images, train=False)

