"""A pretraining or classifier (fine-tuning, distillation) workdir as a network: the one loader of trained weights.

The architecture comes from the workdir's config.json, the weights from its checkpoints: only `params` and
`batch_stats` are read, never the optimizer state.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from jax.sharding import Mesh

from sslx import models, parallel, paths
from sslx.checkpoint import Checkpointer
from sslx.models import bn_axis, build_encoder, build_head, compute_dtype, network_variables


@dataclasses.dataclass(frozen=True)
class Trained:
    """A workdir's network at one checkpoint: a pretraining's encoder and head, or a fine-tuned classifier."""
    workdir: epath.Path
    config: ml_collections.ConfigDict   # the workdir's config.json
    step: int
    network: nn.Module                  # built from `config`, eval mode (no replica axis)
    variables: dict[str, Any]           # {'params', 'batch_stats'} ('params' alone without BatchNorm), replicated

    @property
    def params(self) -> Any:
        return self.variables["params"]

    @property
    def batch_stats(self) -> Any:
        return self.variables.get("batch_stats", {})

    def predict_fn(self) -> Callable[[jax.Array], jax.Array]:
        """`images -> outputs` of the network in eval mode (a classifier's logits)."""
        return lambda images: self.network.apply(self.variables, images, train=False)


class EncoderWithHead(nn.Module):
    """Encoder + projection head; the parts of any method's network that the evaluators reuse."""
    encoder: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array, train: bool):
        return self.head(self.encoder(images, train=train), train=train)


def pretrained_network(config: ml_collections.ConfigDict) -> EncoderWithHead:
    return EncoderWithHead(build_encoder(config.model, None), build_head(config, None))


def read_config(workdir: paths.PathLike, key: str = "config.pretrained",
                written_by: str = "sslx-pretrain") -> ml_collections.ConfigDict:
    """The config.json of the workdir that config key `key` names; one-line errors for a missing or unreadable one."""
    path = paths.as_path(workdir) / "config.json"
    if not paths.as_path(workdir).is_dir():
        raise FileNotFoundError(f"{key}={workdir} does not exist: pass a workdir written by {written_by}")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as error:
        raise FileNotFoundError(f"cannot read {path} ({type(error).__name__}): {key} must be a workdir written by "
                                f"{written_by}") from None


def load_workdir(workdir: str, step: int | None, mesh: Mesh, network: Callable[[ml_collections.ConfigDict], nn.Module],
                 config: ml_collections.ConfigDict) -> Trained:
    """The weights of the network that `network(config)` builds from `config` (the workdir's config.json), at
    checkpoint `step` (None or negative: the latest), replicated on `mesh`: only 'params' and 'batch_stats' are read."""
    if not (paths.as_path(workdir) / "checkpoints").is_dir():
        raise FileNotFoundError(f"workdir {workdir} has no checkpoints/ directory")
    size = config.data.image_size
    model = network(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    try:
        step, variables = restore_variables(workdir, shapes, step, mesh)
    except ValueError:
        if "encoder" not in shapes["params"]:
            raise
        # A method with a head of its own (DINO's, SwAV's prototypes) saved no config.head projection head: its
        # encoder is what is evaluated. An encoder of another shape fails again here, naming the key.
        encoder_only = {name: {"encoder": tree["encoder"]} for name, tree in shapes.items() if "encoder" in tree}
        step, variables = restore_variables(workdir, encoder_only, step, mesh)
    return Trained(paths.absolute(workdir), config, step, model, variables)


def restore_variables(workdir: str, shapes: dict[str, Any], step: int | None, mesh: Mesh) -> tuple[int, dict]:
    """(step, {'params', 'batch_stats'}) of the checkpoint of `step` (None or negative: the latest) in `workdir`,
    shaped as the network variables `shapes` (only 'params' where it has no BatchNorm), replicated on `mesh`."""
    sharding = parallel.replicated(mesh)
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        {name: shapes[name] for name in ("params", "batch_stats") if name in shapes})
    checkpointer = Checkpointer(workdir, keep=1, every_steps=1)
    try:
        step, variables = checkpointer.restore_subtree(like, None if step is None or step < 0 else step)
    finally:
        checkpointer.close()
    return step, variables


def load_pretrained(workdir: str, step: int | None, mesh: Mesh, key: str = "config.pretrained") -> Trained:
    """The encoder and head of a pretraining (or imported) workdir."""
    return load_workdir(workdir, step, mesh, pretrained_network, read_config(workdir, key))


CLASSIFIER_KEYS = ("model", "head", "head_layers", "num_classes")


def load_classifier(workdir: str, step: int | None, mesh: Mesh, key: str = "config.teacher") -> Trained:
    """The classifier of a fine-tuning or distillation workdir (config.json with CLASSIFIER_KEYS)."""
    config = read_config(workdir, key, "sslx-finetune")
    missing = [k for k in CLASSIFIER_KEYS if k not in config]
    if missing:
        raise ValueError(f"{key}={workdir} is not a classifier workdir: its config.json has no {', '.join(missing)} "
                         f"(a pretraining workdir?); pass a workdir written by sslx-finetune or sslx-distill")
    return load_workdir(workdir, step, mesh, lambda c: build_classifier(c, None), config)


def check_head_layer(config: ml_collections.ConfigDict, layer: int, key: str) -> None:
    depth = build_head(config, None).num_layers
    if not 0 <= layer < depth:
        raise ValueError(f"{key}={layer} must lie in [0, {depth - 1}]: 0 is the encoder output, i the output of "
                         f"projection-head layer i (the last layer, the contrastive space, is excluded)")


def embed(config: ml_collections.ConfigDict, variables: dict[str, Any], images: jax.Array,
          head_layer: int = 0) -> jax.Array:
    """Frozen features in eval mode: the encoder output (layer 0) or the output of head layer `head_layer`.

    `config` is the pretraining config, `variables` {'params', 'batch_stats'} as in `Trained.variables`.
    """
    if head_layer and "head" not in variables["params"]:
        raise ValueError(f"head_layer={head_layer}: the {config.method} workdir has no projection head "
                         f"(config.head) to read features from; use head_layer=0, the encoder's features")
    if head_layer == 0:
        return build_encoder(config.model, None).apply(
            network_variables(variables["params"], variables.get("batch_stats"), "encoder"), images, train=False)
    return pretrained_network(config).apply(variables, images, train=False)[1][head_layer]


class HeadLayers(nn.Module):
    """The first `num_layers` non-final layers of a ProjectionHead (Dense -> BN -> ReLU), with its parameter names,
    so SimCLRv2 fine-tuning can start from the middle of the pretrained head."""
    num_layers: int
    hidden_dim: int | None
    bn_axis_name: str | None
    bn_momentum: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x.astype(self.dtype)
        for layer in range(self.num_layers):
            h = nn.Dense(self.hidden_dim or x.shape[-1], use_bias=False, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"dense{layer}")(h)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                     axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=f"bn{layer}")(h))
        return h.astype(jnp.float32)


class Classifier(nn.Module):
    """Encoder, optionally the first head layers, and a linear classifier: the fine-tuned network."""
    encoder: nn.Module
    head: nn.Module | None
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        features = self.encoder(images, train=train)
        if self.head is not None:
            features = self.head(features, train=train)
        return models.LinearClassifier(self.num_classes, name="classifier")(features)


def build_classifier(config: ml_collections.ConfigDict, axis_name: str | None) -> Classifier:
    """From a fine-tuning config.json (or the pretraining config plus `head_layers` and `num_classes`)."""
    head = None
    if config.head_layers > 0:
        head = HeadLayers(config.head_layers, config.head.hidden_dim if config.head.hidden_dim > 0 else None,
                          bn_axis(config.model, axis_name), config.model.bn_momentum, compute_dtype(config.model))
    return Classifier(build_encoder(config.model, axis_name), head, config.num_classes)
