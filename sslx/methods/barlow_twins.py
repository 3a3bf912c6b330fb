"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' embeddings, standardised
over the global batch, is pushed to the identity."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sslx.losses import barlow_twins, embedding_std
from sslx.methods.base import Method, Metrics, views
from sslx.parallel import BATCH_AXIS


class BarlowTwins(Method):
    name = config_section = "barlow_twins"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.lambda_offdiag = 5e-3
        return c

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, step
        view1, view2 = views(batch)
        out1, stats = self.forward(params, batch_stats, view1, jax.random.fold_in(rng, 1))
        out2, stats = self.forward(params, stats, view2, jax.random.fold_in(rng, 2))
        # Every replica computes the global batch's loss; the loop's pmean leaves it unchanged.
        redundancy = barlow_twins(out1["z"], out2["z"], lambda_offdiag=self.config.barlow_twins.lambda_offdiag,
                                  axis_name=BATCH_AXIS)
        probe_loss, probe_metrics = self.probe_loss(out1, batch)
        return redundancy + probe_loss, (
            stats, {"barlow_twins_loss": redundancy, "z_std": embedding_std(out1["z"]), **probe_metrics}, {})
