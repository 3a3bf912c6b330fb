"""SimSiam (Chen & He 2021): predictor + stop-gradient, no target network and no negatives.

The predictor's learning rate is not decayed (sec. 4.2): recipes set
config.optim.constant_lr_modules=('predictor',).
"""
from __future__ import annotations

from typing import Any

import jax

from sslx.losses import embedding_std, simsiam_negative_cosine
from sslx.methods.base import Method, Metrics, views


class SimSiam(Method):
    name = "simsiam"
    has_predictor = True

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, step
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1, jax.random.fold_in(rng, 1))
        out2, stats = self.forward(params, stats, view2, jax.random.fold_in(rng, 2))
        # Eq. 2: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2.
        similarity = (simsiam_negative_cosine(out1["p"], out2["z"]) + simsiam_negative_cosine(out2["p"], out1["z"])) / 2
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        # The per-dimension std of l2-normalised z falls towards 0 when SimSiam collapses (sec. 4.1).
        metrics = {"simsiam_loss": similarity, "z_std": embedding_std(out1["z"]), **probe_metrics}
        return similarity + probe_loss, (stats, metrics, {})
