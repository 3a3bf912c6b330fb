"""BYOL (Grill et al. 2020): predict an EMA target's projection of the other view."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sslx.losses import byol_regression, embedding_std
from sslx.methods.base import Metrics, views
from sslx.methods.target import MomentumTargetMethod, cosine_momentum


class BYOL(MomentumTargetMethod):
    name = config_section = "byol"
    has_predictor = True

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.tau_base = 0.996            # target EMA rate at step 0, raised to 1 by a cosine
        return c

    def momentum(self, step: jax.Array) -> jax.Array:
        return cosine_momentum(step, self.total_steps, self.config.byol.tau_base)

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1, jax.random.fold_in(rng, 1))
        out2, stats = self.forward(params, stats, view2, jax.random.fold_in(rng, 2))
        z1, target_stats = self.target_forward(extra, extra["target_batch_stats"], view1)
        z2, target_stats = self.target_forward(extra, target_stats, view2)
        # Eq. 2 plus its symmetric term: each view's prediction regresses the other view's target.
        regression = byol_regression(out1["p"], z2) + byol_regression(out2["p"], z1)
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        metrics = {"byol_loss": regression, "tau": self.momentum(step), "z_std": embedding_std(out1["z"]),
                   **probe_metrics}
        return regression + probe_loss, (stats, metrics, {"target_batch_stats": target_stats})
