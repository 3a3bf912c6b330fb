"""VICReg (Bardes, Ponce & LeCun 2022): invariance, variance and covariance terms on the two views'
embeddings, with statistics over the global batch."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sslx.losses import embedding_std, vicreg
from sslx.methods.base import Method, Metrics, views
from sslx.parallel import BATCH_AXIS


class VICReg(Method):
    name = config_section = "vicreg"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.sim_coeff = 25.0            # lambda
        c.std_coeff = 25.0            # mu
        c.cov_coeff = 1.0             # nu
        return c

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, step
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1, jax.random.fold_in(rng, 1))
        out2, stats = self.forward(params, stats, view2, jax.random.fold_in(rng, 2))
        cfg = self.config.vicreg
        terms = vicreg(out1["z"], out2["z"], sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff,
                       cov_coeff=cfg.cov_coeff, axis_name=BATCH_AXIS)
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        metrics = {"vicreg_loss": terms.loss, "invariance": terms.invariance, "variance": terms.variance,
                   "covariance": terms.covariance, "z_std": embedding_std(out1["z"]), **probe_metrics}
        return terms.loss + probe_loss, (stats, metrics, {})
