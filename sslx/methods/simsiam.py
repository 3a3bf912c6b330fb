"""SimSiam (Chen & He 2021): predictor + stop-gradient, no target network and no negatives.

The predictor's learning rate is not decayed (sec. 4.2): recipes set
config.optim.constant_lr_modules=('predictor',).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sslx.losses import embedding_std, simsiam_negative_cosine
from sslx.methods.base import Method, Metrics, SSLNetwork, views
from sslx.models import build_encoder, build_head, build_predictor


class SimSiam(Method):
    has_predictor = True

    def network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=build_encoder(self.config.model, axis_name), head=build_head(self.config, axis_name),
                          predictor=build_predictor(self.config, axis_name), num_classes=self.num_classes)

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, rng, step
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1)
        out2, stats = self.forward(params, stats, view2)
        # Eq. 2: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2.
        similarity = (simsiam_negative_cosine(out1["p"], out2["z"]) + simsiam_negative_cosine(out2["p"], out1["z"])) / 2
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        # The per-dimension std of l2-normalised z falls towards 0 when SimSiam collapses (sec. 4.1).
        metrics = {"simsiam_loss": similarity, "z_std": embedding_std(out1["z"]), **probe_metrics}
        return similarity + probe_loss, (stats, metrics, {})
