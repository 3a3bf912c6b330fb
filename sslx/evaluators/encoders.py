"""A pretraining (or fine-tuning) workdir as a network for the evaluation stages.

The architecture comes from the workdir's config.json, the weights from its checkpoints: only `params` and
`batch_stats` are read, never the optimizer state.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

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
class Pretrained:
    workdir: epath.Path
    config: ml_collections.ConfigDict   # the pretraining config
    step: int
    params: Any                         # {'encoder', 'head'}, replicated over the mesh
    batch_stats: Any                    # {} where the network has no BatchNorm (a ViT with a BN-free head)

    @property
    def variables(self) -> dict[str, Any]:
        return network_variables(self.params, self.batch_stats)


class EncoderWithHead(nn.Module):
    """Encoder + projection head; the parts of any method's network that the evaluators reuse."""
    encoder: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array, train: bool):
        return self.head(self.encoder(images, train=train), train=train)


def read_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
    path = paths.as_path(workdir) / "config.json"
    if not paths.as_path(workdir).is_dir():
        raise FileNotFoundError(f"pretrained workdir {workdir} does not exist (config.pretrained)")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as error:
        raise FileNotFoundError(f"cannot read {path} ({type(error).__name__}): config.pretrained must be a "
                                f"workdir written by sslx-pretrain") from None


def load_pretrained(workdir: str, step: int | None, mesh: Mesh) -> Pretrained:
    """The encoder and head weights of `workdir` at `step` (None or negative: the latest), replicated on `mesh`."""
    config = read_config(workdir)
    if not (paths.as_path(workdir) / "checkpoints").is_dir():
        raise FileNotFoundError(f"pretrained workdir {workdir} has no checkpoints/ directory")
    size = config.data.image_size
    network = EncoderWithHead(build_encoder(config.model, None), build_head(config, None))
    shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    try:
        step, restored = restore_variables(workdir, shapes, step, mesh)
    except ValueError:
        # A method with a head of its own (DINO's, SwAV's prototypes) saved no config.head projection head: its
        # encoder is what is evaluated. An encoder of another shape fails again here, naming the key.
        encoder_only = {name: {"encoder": tree["encoder"]} for name, tree in shapes.items() if "encoder" in tree}
        step, restored = restore_variables(workdir, encoder_only, step, mesh)
    return Pretrained(paths.absolute(workdir), config, step, restored["params"], restored.get("batch_stats", {}))


def restore_variables(workdir: str, shapes: dict[str, Any], step: int | None, mesh: Mesh) -> tuple[int, dict]:
    """(step, {'params', 'batch_stats'}) of the checkpoint of `step` (None or negative: the latest) in `workdir`,
    shaped as the network variables `shapes` (only 'params' where it has no BatchNorm), replicated on `mesh`."""
    sharding = parallel.replicated(mesh)
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        {name: shapes[name] for name in ("params", "batch_stats") if name in shapes})
    checkpointer = Checkpointer(workdir, keep=1, every_steps=1)
    try:
        return checkpointer.restore_subtree(like, None if step is None or step < 0 else step)
    finally:
        checkpointer.close()


def check_head_layer(config: ml_collections.ConfigDict, layer: int, key: str) -> None:
    depth = build_head(config, None).num_layers
    if not 0 <= layer < depth:
        raise ValueError(f"{key}={layer} must lie in [0, {depth - 1}]: 0 is the encoder output, i the output of "
                         f"projection-head layer i (the last layer, the contrastive space, is excluded)")


def embed(config: ml_collections.ConfigDict, variables: dict[str, Any], images: jax.Array,
          head_layer: int = 0) -> jax.Array:
    """Frozen features in eval mode: the encoder output (layer 0) or the output of head layer `head_layer`.

    `config` is the pretraining config, `variables` {'params', 'batch_stats'} as in `Pretrained.variables`.
    """
    if head_layer and "head" not in variables["params"]:
        raise ValueError(f"head_layer={head_layer}: the {config.method} workdir has no projection head "
                         f"(config.head) to read features from; use head_layer=0, the encoder's features")
    if head_layer == 0:
        return build_encoder(config.model, None).apply(
            network_variables(variables["params"], variables.get("batch_stats"), "encoder"), images, train=False)
    network = EncoderWithHead(build_encoder(config.model, None), build_head(config, None))
    return network.apply(variables, images, train=False)[1][head_layer]


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
