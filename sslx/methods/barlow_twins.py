"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' embeddings, standardised
over the global batch, is pushed to the identity."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sslx.losses import barlow_twins, embedding_std
from sslx.methods.base import Method, Metrics, SSLNetwork, views
from sslx.models import build_encoder, build_head
from sslx.parallel import BATCH_AXIS


class BarlowTwins(Method):

    def network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=build_encoder(self.config.model, axis_name),
                          head=build_head(self.config, axis_name), num_classes=self.num_classes)

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, rng, step
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1)
        out2, stats = self.forward(params, stats, view2)
        # Every replica computes the global batch's loss; the loop's pmean leaves it unchanged.
        redundancy = barlow_twins(out1["z"], out2["z"], lambda_offdiag=self.config.barlow_twins.lambda_offdiag,
                                  axis_name=BATCH_AXIS)
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        return redundancy + probe_loss, (
            stats, {"barlow_twins_loss": redundancy, "z_std": embedding_std(out1["z"]), **probe_metrics}, {})
