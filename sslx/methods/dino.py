"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (encoder + DINO head) on every crop predicts, through a softmax at temperature 0.1, the output of an EMA
teacher on the global crops, centered (the center an EMA of the teacher's mean output over the global batch) and
sharpened by a lower teacher temperature, which warms up linearly per epoch. The teacher's rate rises to 1 by a
cosine. The head's last layer is weight-normalised, its norm held at 1 with `norm_last_layer`, and it is not
updated during the first `freeze_last_layer_epochs`. Global crops are the leading views of the first view's size
(config.augment.crops lists them first); the student runs each resolution once (SSLNetwork).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslx import models, optim
from sslx.losses import dino
from sslx.methods.base import Metrics, SSLNetwork, global_views, views
from sslx.methods.target import MomentumTargetMethod, cosine_momentum
from sslx.parallel import BATCH_AXIS

LAST_LAYER = "head/last_layer"


class DINO(MomentumTargetMethod):
    name = config_section = "dino"
    multi_crop = True

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The reference code's defaults (facebookresearch/dino main_dino.py)."""
        c = ml_collections.ConfigDict()
        c.out_dim = 65536             # K, the last layer's outputs
        c.hidden_dim = 2048           # the head's MLP width
        c.bottleneck_dim = 256        # l2-normalised before the weight-normalised last layer
        c.use_bn_in_head = False
        c.norm_last_layer = True      # the last layer's weight norm stays 1; False learns it (ViT-S recipes)
        c.momentum_teacher = 0.996    # teacher EMA rate at step 0, raised to 1 by a cosine
        c.student_temperature = 0.1
        c.teacher_temperature = 0.04
        c.warmup_teacher_temperature = 0.04     # the teacher's temperature rises linearly from this ...
        c.warmup_teacher_temperature_epochs = 0   # ... over these epochs (per epoch, as the reference)
        c.center_momentum = 0.9
        c.freeze_last_layer_epochs = 1.0        # the last layer is not updated in these first epochs
        return c

    def validate(self) -> None:
        super().validate()
        cfg = self.config.dino
        for key in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            if cfg[key] <= 0:
                raise ValueError(f"config.dino.{key}={cfg[key]} must be positive.")

    def head(self, axis_name: str | None) -> nn.Module:
        cfg = self.config.dino
        return models.DinoHead(out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim,
                               use_bn=cfg.use_bn_in_head, learn_last_scale=not cfg.norm_last_layer,
                               bn_axis_name=models.bn_axis(self.config.model, axis_name),
                               bn_momentum=self.config.model.bn_momentum, dtype=models.compute_dtype(self.config.model))

    def network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=models.build_encoder(self.config.model, axis_name), head=self.head(axis_name),
                          num_classes=self.num_classes)

    def target_network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=models.build_encoder(self.config.model, axis_name), head=self.head(axis_name))

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        params, batch_stats, extra = super().init(rng, images)
        extra["center"] = jnp.zeros((self.config.dino.out_dim,), jnp.float32)
        return params, batch_stats, extra

    def optimizer(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        frozen = self.epochs_to_steps(self.config.dino.freeze_last_layer_epochs, "config.dino.freeze_last_layer_epochs")
        return optim.make_optimizer(self.config.optim, schedule, frozen={LAST_LAYER: frozen} if frozen else None,
                                    total_steps=self.total_steps)

    def momentum(self, step: jax.Array) -> jax.Array:
        return cosine_momentum(step, self.total_steps, self.config.dino.momentum_teacher)

    def teacher_temperature(self, step: jax.Array) -> jax.Array:
        """Linear in the epoch from the warm-up value to the final one over the warm-up epochs, as the reference's
        per-epoch schedule (its last warm-up epoch already at the final value)."""
        cfg = self.config.dino
        warmup = cfg.warmup_teacher_temperature_epochs
        if warmup <= 0:
            return jnp.asarray(cfg.teacher_temperature, jnp.float32)
        epoch = step // self.epochs_to_steps(1, "config.dino.warmup_teacher_temperature_epochs")
        progress = jnp.clip(epoch / max(warmup - 1, 1), 0.0, 1.0)
        return cfg.warmup_teacher_temperature + (cfg.teacher_temperature - cfg.warmup_teacher_temperature) * progress

    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        cfg = self.config.dino
        crops = views(batch)
        teacher_crops = global_views(crops)
        n = crops[0].shape[0]
        out, stats = self.forward(params, batch_stats, crops, rng)
        teacher, target_stats = self.target_forward(extra, extra["target_batch_stats"], teacher_crops)
        temperature = self.teacher_temperature(step)
        result = dino(out["z"].reshape(len(crops), n, -1), teacher.reshape(len(teacher_crops), n, -1),
                      extra["center"], student_temperature=cfg.student_temperature, teacher_temperature=temperature,
                      center_momentum=cfg.center_momentum, axis_name=BATCH_AXIS)
        # The online probe reads the first global crop's features.
        probe_loss, probe_metrics = self.probe_loss(jax.tree.map(lambda x: x[:n], out), batch)
        metrics = {"dino_loss": result.loss, "teacher_entropy": result.teacher_entropy,
                   "teacher_temperature": temperature, "momentum": self.momentum(step),
                   "center_norm": jnp.linalg.norm(extra["center"]), **probe_metrics}
        return result.loss + probe_loss, (stats, metrics, {"target_batch_stats": target_stats,
                                                            "center": result.center})

    def after_update(self, state: Any, outputs: Any) -> Any:
        """The teacher's EMA and BN statistics (MomentumTargetMethod), and the center the loss computed."""
        return {**super().after_update(state, outputs), "center": outputs["center"]}
