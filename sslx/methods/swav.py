"""SwAV (Caron et al. 2020): swapped prediction of online cluster assignments.

Every crop's l2-normalised projection is scored against K prototypes (unit columns, renormalised after every
update). The codes of the global crops (the leading views of the first view's size) come from Sinkhorn-Knopp over
the global batch, across replicas (`sslx.losses.sinkhorn`); every other crop predicts them (`sslx.losses.swav`).
For small batches a queue of the global crops' projections from earlier steps joins the assignment once it has
filled, starting at `queue_start_epoch`; the prototypes are not updated during the first
`freeze_prototypes_epochs`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from sslx import config as config_lib
from sslx import models, optim
from sslx.losses import l2_normalize, swav
from sslx.methods.base import Method, Metrics, SSLNetwork, global_count, global_views, views
from sslx.parallel import BATCH_AXIS

PROTOTYPES = "head/prototypes"


class SwAVHead(nn.Module):
    """Projection MLP, l2 normalisation, then the prototypes: a bias-free Dense whose columns are the prototypes.
    Returns (scores, hiddens): hiddens ends with the normalised projection, what the queue keeps."""
    projection: nn.Module
    num_prototypes: int

    @nn.compact
    def __call__(self, x, train: bool):
        z, hiddens = self.projection(x, train=train)
        z = l2_normalize(z)
        scores = nn.Dense(self.num_prototypes, use_bias=False, param_dtype=jnp.float32, name="prototypes")(z)
        return scores, [*hiddens[:-1], z]


def normalize_prototypes(params: Any) -> Any:
    """The params with every prototype (a column of the prototypes' kernel) of unit norm."""
    head = params["head"]
    kernel = l2_normalize(head["prototypes"]["kernel"].T).T
    return {**params, "head": {**head, "prototypes": {**head["prototypes"], "kernel": kernel}}}


def renormalize_prototypes() -> optax.GradientTransformation:
    """Updates that leave the prototypes unit vectors after they are applied (SwAV normalises them before every
    step; doing it after every update and at init is the same sequence)."""
    def update(updates, state, params):
        moved = optax.apply_updates(params, updates)
        return jax.tree.map(jnp.subtract, normalize_prototypes(moved), params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class SwAV(Method):
    name = config_section = "swav"
    multi_crop = True

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The reference code's defaults (facebookresearch/swav main_swav.py)."""
        c = ml_collections.ConfigDict()
        c.num_prototypes = 3000
        c.temperature = 0.1
        c.epsilon = 0.05              # Sinkhorn-Knopp's entropic regularisation
        c.sinkhorn_iterations = 3
        c.queue_length = 0            # > 0: features of earlier batches join the assignment (small batches); global
                                      # size, a multiple of batch_size
        c.queue_start_epoch = 15.0    # the queue fills from this epoch and joins once full
        c.freeze_prototypes_epochs = 1.0        # the prototypes are not updated in these first epochs
        return c

    def validate(self) -> None:
        super().validate()
        cfg, batch = self.config.swav, self.config.batch_size
        if cfg.queue_length < 0 or cfg.queue_length % batch:
            raise ValueError(f"config.swav.queue_length={cfg.queue_length} must be 0 (no queue) or a multiple of "
                             f"config.batch_size={batch} (whole batches of features are queued).")
        for key in ("temperature", "epsilon"):
            if cfg[key] <= 0:
                raise ValueError(f"config.swav.{key}={cfg[key]} must be positive.")

    def network(self, axis_name: str | None) -> nn.Module:
        head = SwAVHead(models.build_head(self.config, axis_name), self.config.swav.num_prototypes)
        return SSLNetwork(encoder=models.build_encoder(self.config.model, axis_name), head=head,
                          num_classes=self.num_classes)

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        params, batch_stats, extra = super().init(rng, images)
        cfg = self.config.swav
        if cfg.queue_length:
            crops = global_count(config_lib.view_sizes(self.config.augment, self.config.data.image_size))
            extra["queue"] = jnp.zeros((crops, cfg.queue_length, self.config.head.out_dim), jnp.float32)
        return normalize_prototypes(params), batch_stats, extra

    def optimizer(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        frozen = self.epochs_to_steps(self.config.swav.freeze_prototypes_epochs, "config.swav.freeze_prototypes_epochs")
        return optax.chain(optim.make_optimizer(self.config.optim, schedule,
                                                frozen={PROTOTYPES: frozen} if frozen else None,
                                                total_steps=self.total_steps),
                           renormalize_prototypes())

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        del step
        cfg = self.config.swav
        crops = views(batch)
        assigned, n = len(global_views(crops)), crops[0].shape[0]
        out, stats = self.forward(params, batch_stats, crops, rng)
        scores = out["z"].reshape(len(crops), n, -1)
        swapped = lambda queue_scores: swav(  # noqa: E731
            scores, temperature=cfg.temperature, epsilon=cfg.epsilon, iterations=cfg.sinkhorn_iterations,
            assign_crops=assigned, queue_scores=queue_scores, axis_name=BATCH_AXIS)
        result, metrics = swapped(None), {}
        if cfg.queue_length:
            # The queue joins once full (its oldest row set), as the reference; each replica scores its share of
            # the global queue against the current prototypes, and Sinkhorn's sums cover every replica's rows.
            queue = extra["queue"]
            share = queue.shape[1] // lax.axis_size(BATCH_AXIS)
            local = lax.dynamic_slice_in_dim(queue, lax.axis_index(BATCH_AXIS) * share, share, axis=1)
            used = jnp.any(queue[:, -1] != 0)
            with_queue = swapped(lax.stop_gradient(local @ params["head"]["prototypes"]["kernel"]))
            result = jax.tree.map(lambda a, b: jnp.where(used, a, b), with_queue, result)
            metrics["queue_used"] = used.astype(jnp.float32)
        probe_loss, probe_metrics = self.probe_loss(jax.tree.map(lambda x: x[:n], out), batch)
        metrics.update(swav_loss=result.loss, swav_acc=result.accuracy, code_entropy=result.entropy,
                       **probe_metrics)
        embeddings = out["hiddens"][-1].reshape(len(crops), n, -1)[:assigned]
        return result.loss + probe_loss, (stats, metrics, {"embeddings": lax.stop_gradient(embeddings)})

    def after_update(self, state: Any, outputs: Any) -> Any:
        """From queue_start_epoch on, the global crops' projections of the global batch enter the queue's front
        (replica order = batch order, the same queue on every replica) and its oldest rows leave."""
        if not self.config.swav.queue_length:
            return state.extra
        queue = state.extra["queue"]
        new = lax.all_gather(outputs["embeddings"], BATCH_AXIS, axis=1, tiled=True, to="invarying")
        filled = jnp.concatenate([new, queue[:, :queue.shape[1] - new.shape[1]]], axis=1)
        start = self.epochs_to_steps(self.config.swav.queue_start_epoch, "config.swav.queue_start_epoch")
        return {**state.extra, "queue": jnp.where(state.step - 1 >= start, filled, queue)}
