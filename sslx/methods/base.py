"""The method interface: everything a self-supervised method adds to the method-agnostic loop.

A method owns its network (encoder + heads), the loss it computes per replica, the extra state it
carries between steps (EMA target params, a queue, ...) and what happens after the optimizer update.
The pretraining loop only calls the methods below.
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from sslx import config as config_lib
from sslx import models, optim
from sslx.losses import check_labels, masked_mean, softmax_cross_entropy
from sslx.parallel import BATCH_AXIS

Metrics = dict[str, jax.Array]


class SSLNetwork(nn.Module):
    """Encoder, optional projection head and predictor, optional linear probe on stop_gradient(features).

    `images` is one batch [n, H, W, 3] or a sequence of views; the encoder then runs once per run of consecutive
    views of one size, concatenated (DINO's MultiCropWrapper: 2 global + 6 local crops take two encoder calls),
    and the heads once on all the features. Every output leads with the rows of the views in their order.
    """
    encoder: nn.Module
    head: nn.Module | None = None
    predictor: nn.Module | None = None   # BYOL / SimSiam / MoCo v3: p = q(z), on top of the head
    num_classes: int = 0

    @nn.compact
    def __call__(self, images: jax.Array | Sequence[jax.Array], train: bool) -> dict[str, Any]:
        groups = resolution_groups(images if isinstance(images, (list, tuple)) else [images])
        features = [self.encoder(group, train=train) for group in groups]
        features = features[0] if len(features) == 1 else jnp.concatenate(features)
        out = {"features": features}
        if self.head is not None:
            out["z"], out["hiddens"] = self.head(features, train=train)
        if self.predictor is not None:
            out["p"], _ = self.predictor(out["z"], train=train)
        if self.num_classes:
            out["probe_logits"] = models.LinearClassifier(self.num_classes, name="probe")(
                lax.stop_gradient(features))
        return out


def resolution_groups(views: Sequence[jax.Array]) -> list[jax.Array]:
    """Runs of consecutive views of one shape, each concatenated along the batch axis."""
    runs: list[list[jax.Array]] = []
    for view in views:
        if runs and runs[-1][0].shape == view.shape:
            runs[-1].append(view)
        else:
            runs.append([view])
    return [run[0] if len(run) == 1 else jnp.concatenate(run) for run in runs]


def views(batch: dict[str, Any]) -> tuple[jax.Array, ...]:
    """The batch's augmented views, each [n, S, S, 3], in the order config.augment lists them (with
    config.augment.crops, the global crops first): what every method reads its images from."""
    return tuple(batch["views"])


def global_views(images: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """The leading views of the first view's size: DINO's teacher inputs and SwAV's assigned crops (the global crops
    of a multi-crop batch; both views of a two-view one)."""
    return tuple(images[:global_count([view.shape[1] for view in images])])


def global_count(sizes: Sequence[int]) -> int:
    """How many leading views share the first view's size (`sizes` as sslx.config.view_sizes lists them)."""
    return next((i for i, size in enumerate(sizes) if size != sizes[0]), len(sizes))


def check_batch(batch: dict[str, Any]) -> None:
    """The per-replica batch every method reads: 'views', at least two float [n, S, S, 3] of one n (their sides
    may differ: multi-crop) and, where the online probe or SupCon needs them, int labels [n] (checked at trace
    time, so a pipeline or view-maker change that breaks it fails before the first step)."""
    images = views(batch)
    if len(images) < 2:
        raise ValueError(f"a pretraining batch needs at least two views, got {len(images)}")
    chex.assert_rank(images, 4)
    chex.assert_type(images, float)
    chex.assert_equal_shape_prefix(images, 1)
    for view in images:
        chex.assert_axis_dimension(view, 3, 3)
    if "label" in batch:
        check_labels(batch["label"], images[0].shape[0])


class Method(abc.ABC):
    """Base class. A subclass with a `name`, in a module of sslx.methods, is found there and selected by
    config.method=<name>; one anywhere else on the Python path by config.method='<module>:<Class>'."""
    name = ""               # its config.method value (methods of the sslx.methods package)
    config_section = ""     # its own config section, config.<config_section>, holding default_config()
    has_predictor = False   # whether config.predictor applies
    multi_crop = False      # whether it reads any number of views (config.augment.crops); else exactly two

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The defaults of config.<config_section> (sslx.config.base_config adds them to every config)."""
        return ml_collections.ConfigDict()

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, total_steps: int,
                 steps_per_epoch: int = 0):
        self.config = config
        # -1: unlabelled data (a flat image folder, a tfrecord without labels.txt): nothing for a probe to learn.
        self.num_classes = max(num_classes, 0) if config.probe.online else 0
        self.total_steps = total_steps   # for schedules inside the method (EMA momentum, ...)
        self.steps_per_epoch = steps_per_epoch   # for settings given in epochs (0: unknown)
        if self.config_section and self.config_section not in config:
            raise ValueError(f"config.{self.config_section}, the section of config.method={config.method!r}, is "
                             f"missing: start the recipe from sslx.config.base_config(method={config.method!r}) "
                             f"(--config.method on the command line adds it too)")
        self.validate()

    def validate(self) -> None:
        """Method/option mismatches, raised as one-line ValueErrors naming the config key."""
        layers = self.config.predictor.num_layers
        if self.has_predictor and layers < 1:
            raise ValueError(f"config.predictor.num_layers={layers}: {self.config.method} needs a predictor (>= 1).")
        if not self.has_predictor and layers > 0:
            raise ValueError(f"config.predictor.num_layers={layers}: {self.config.method} has no predictor; set 0.")
        sizes = config_lib.view_sizes(self.config.augment, self.config.data.image_size)
        if self.config.micro_batch_size and type(self).embed is Method.embed:
            raise ValueError(f"config.micro_batch_size > 0 needs a method with embed/loss_from_embeddings "
                             f"(GradCache); {self.config.method} has none: set config.micro_batch_size=0.")
        drop_path = models.drop_path_rate(self.config.model)   # one line for a rate outside [0, 1)
        if self.config.micro_batch_size and drop_path:
            raise ValueError("config.model.vit.drop_path_rate > 0 and config.micro_batch_size > 0: GradCache's "
                             "recomputed forward pass would draw other drop masks; set one of them to 0.")
        if not self.multi_crop and (len(sizes) != 2 or sizes[0] != sizes[1]):
            raise ValueError(f"config.augment.crops: {self.config.method} takes two views of one size; set "
                             f"config.augment.crops=() for its two default views, or use a multi-crop method "
                             f"(dino, swav).")

    def epochs_to_steps(self, epochs: float, key: str) -> int:
        """A setting given in epochs (DINO's frozen last layer, SwAV's queue start) in optimizer steps."""
        if epochs <= 0:
            return 0
        if self.steps_per_epoch <= 0:
            raise ValueError(f"{key} is given in epochs, but {type(self).__name__} was built without "
                             f"steps_per_epoch (pass it to sslx.methods.build_method)")
        return round(epochs * self.steps_per_epoch)

    def optimizer(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        """The optimizer config.optim describes around `schedule`; methods that freeze or project some
        parameters (DINO's last layer, SwAV's prototypes) wrap it."""
        return optim.make_optimizer(self.config.optim, schedule, total_steps=self.total_steps)

    def network(self, axis_name: str | None) -> nn.Module:
        """The trained network; `axis_name` binds global BN inside the data-parallel step. By default the encoder
        and projection head of config.model and config.head, the predictor where the method has one, and the
        online probe."""
        return SSLNetwork(encoder=models.build_encoder(self.config.model, axis_name),
                          head=models.build_head(self.config, axis_name),
                          predictor=models.build_predictor(self.config, axis_name) if self.has_predictor else None,
                          num_classes=self.num_classes)

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, extra) for a sample batch, initialised outside any mesh."""
        variables = self.network(None).init(rng, images, train=True)
        return variables["params"], variables.get("batch_stats", {}), self.init_extra(variables)

    def init_extra(self, variables: Any) -> Any:
        """Extra state carried in the train state (EMA targets, queues); none by default."""
        del variables
        return {}

    @abc.abstractmethod
    def loss(self, params: Any, batch_stats: Any, extra: Any, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics, Any]]:
        """Per-replica loss (inside shard_map over BATCH_AXIS) -> (loss, (batch_stats, metrics, outputs)).

        batch_stats are the trained network's updated BN statistics (the loop averages them over
        replicas); `outputs` (no gradient) go to `after_update`: keys to enqueue, a target network's
        BN statistics, ...
        """

    def forward(self, params: Any, batch_stats: Any, images: jax.Array,
                rng: jax.Array | None = None) -> tuple[dict[str, Any], Any]:
        """The trained network in train mode on one batch of views -> (outputs, updated BN statistics).

        Methods that run each view separately (BYOL, SimSiam, MoCo, ...) call it once per view, so BN
        normalises each view on its own, as in their reference code. `rng` draws the encoder's stochastic depth
        (config.model.vit.drop_path_rate); pass a different one to each call.
        """
        out, updates = self.network(BATCH_AXIS).apply(
            models.network_variables(params, batch_stats), images, train=True, mutable=["batch_stats"],
            rngs=None if rng is None else {"dropout": rng})
        return out, models.stats_of(updates)

    def embed(self, params: Any, batch_stats: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        """Per-example network outputs of a (micro-)batch in train mode, and the updated BN statistics.

        With `loss_from_embeddings` this splits `loss` for GradCache (config.micro_batch_size > 0): every
        output leaf leads with the batch axis, so micro-batch outputs concatenate to the batch's. A method that
        does not override it refuses config.micro_batch_size > 0 in `validate`.
        """
        raise NotImplementedError

    def loss_from_embeddings(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Per-replica loss of the whole local batch from the concatenated outputs of `embed`."""
        raise NotImplementedError

    def after_update(self, state: Any, outputs: Any) -> Any:
        """Runs per replica after the optimizer update (EMA, enqueue); returns the new extra state.

        `outputs` is what `loss` returned for it (keys to enqueue, target BN statistics, ...); the
        returned extra state must be the same on every replica (gather or pmean what `outputs` holds).
        """
        del outputs
        return state.extra

    def probe_loss(self, out: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Online linear probe on frozen features: its own loss term, no gradient into the encoder."""
        if "probe_logits" not in out:
            return jnp.zeros((), jnp.float32), {}
        logits = out["probe_logits"]
        labels = batch["label"]
        # Unlabelled examples (label -1, e.g. STL-10's unlabelled split) do not train the probe; the
        # mean is over the labelled rows of the global batch, however unevenly replicas hold them.
        mask = (labels >= 0).astype(jnp.float32)
        safe = jnp.maximum(labels, 0)
        loss = softmax_cross_entropy(logits, safe, mask, axis_name=BATCH_AXIS)
        acc = masked_mean((jnp.argmax(logits, -1) == safe).astype(jnp.float32), mask, BATCH_AXIS)
        return loss, {"probe_loss": loss, "probe_top1": acc}

    def encode(self, params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
        """Encoder features in eval mode (running BN statistics); what the evaluators consume."""
        return models.build_encoder(self.config.model).apply(
            models.network_variables(params, batch_stats, "encoder"), images, train=False)

