"""SimCLR v1/v2 (Chen et al. 2020a, 2020b): NT-Xent between two views through a projection head."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sslx.losses import nt_xent
from sslx.methods.base import Method, Metrics, SSLNetwork, build_encoder, build_head
from sslx.parallel import BATCH_AXIS


class SimCLR(Method):
    """v1 or v2 is the head (config.head.version); the loss and loop are the same."""

    def network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=build_encoder(self.config.model, axis_name),
                          head=build_head(self.config, axis_name), num_classes=self.num_classes)

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics]]:
        del extra, rng, step
        n = batch["view1"].shape[0]
        # Both views in one forward pass: BN statistics then cover the 2N views, as in the reference.
        images = jax.numpy.concatenate([batch["view1"], batch["view2"]], axis=0)
        out, updates = self.network(BATCH_AXIS).apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"])
        contrastive = nt_xent(out["z"][:n], out["z"][n:], temperature=self.config.loss.temperature,
                              axis_name=BATCH_AXIS)
        labelled = {"label": jax.numpy.concatenate([batch["label"], batch["label"]])}
        probe_loss, probe_metrics = self.probe_loss(out, labelled)
        metrics = {"contrastive_loss": contrastive.loss, "contrastive_acc": contrastive.accuracy,
                   "contrastive_entropy": contrastive.entropy, **probe_metrics}
        return contrastive.loss + probe_loss, (updates["batch_stats"], metrics)
