"""SimCLR v1/v2 (Chen et al. 2020a, 2020b): NT-Xent between two views through a projection head."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sslx.losses import nt_xent
from sslx.methods.base import Method, Metrics, views
from sslx.parallel import BATCH_AXIS


class SimCLR(Method):
    """v1 or v2 is the head (config.head.version); the loss and loop are the same."""
    name = "simclr"

    def embed(self, params: Any, batch_stats: Any, batch: dict[str, jax.Array],
              rng: jax.Array | None = None) -> tuple[Any, Any]:
        """Projections (and probe logits) of both views, [n, 2, ...] per leaf."""
        view1, view2 = views(batch)
        n = view1.shape[0]
        # Both views in one forward pass: BN statistics then cover the 2N views, as in the reference.
        out, stats = self.forward(params, batch_stats, jnp.concatenate([view1, view2]), rng)
        keys = [k for k in ("z", "probe_logits") if k in out]
        return {k: jnp.stack([out[k][:n], out[k][n:]], axis=1) for k in keys}, stats

    def loss_from_embeddings(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        z = outputs["z"]
        contrastive = nt_xent(z[:, 0], z[:, 1], temperature=self.config.loss.temperature, axis_name=BATCH_AXIS,
                              chunk_size=self.config.loss.chunk_size)
        probe = ({"probe_logits": jnp.concatenate([outputs["probe_logits"][:, 0], outputs["probe_logits"][:, 1]])}
                 if "probe_logits" in outputs else {})
        probe_loss, probe_metrics = self.probe_loss(probe, {"label": jnp.concatenate([batch["label"]] * 2)})
        metrics = {"contrastive_loss": contrastive.loss, "contrastive_acc": contrastive.accuracy,
                   "contrastive_entropy": contrastive.entropy, **probe_metrics}
        return contrastive.loss + probe_loss, metrics

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del extra, step
        outputs, stats = self.embed(params, batch_stats, batch, rng)
        loss, metrics = self.loss_from_embeddings(outputs, batch)
        return loss, (stats, metrics, {})
