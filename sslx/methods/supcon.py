"""Supervised contrastive learning (Khosla et al. 2020): SimCLR's pipeline with every same-label
view of the global batch as a positive."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sslx.losses import embedding_std, supcon
from sslx.methods.base import Method, Metrics, views
from sslx.parallel import BATCH_AXIS


class SupCon(Method):
    name = "supcon"

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, step
        view1, view2 = views(batch)
        n = view1.shape[0]
        # Both views in one pass, as the reference implementation does.
        out, stats = self.forward(params, batch_stats, jnp.concatenate([view1, view2]), rng)
        # Unlabelled examples (label -1) get a label of their own: their only positive is their other view.
        own = -1 - (lax.axis_index(BATCH_AXIS) * n + jnp.arange(n))
        labels = jnp.where(batch["label"] >= 0, batch["label"], own)
        contrastive = supcon(out["z"][:n], out["z"][n:], labels, temperature=self.config.loss.temperature,
                             axis_name=BATCH_AXIS)
        probe_loss, probe_metrics = self.probe_loss(out, {"label": jnp.concatenate([batch["label"]] * 2)})
        metrics = {"contrastive_loss": contrastive.loss, "contrastive_acc": contrastive.accuracy,
                   "contrastive_entropy": contrastive.entropy, "z_std": embedding_std(out["z"][:n]),
                   **probe_metrics}
        return contrastive.loss + probe_loss, (stats, metrics, {})
