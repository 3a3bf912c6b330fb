"""The two feature baselines every quality claim is compared with: the raw pixels and a random-init encoder.

The pretraining's end-of-run probe, `sslx-knn` and `sslx-linear-eval` (`config.baseline`) build them here, so
a baseline row means the same features wherever it is printed.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from sslx import parallel
from sslx.evaluators.encoders import Trained, embed
from sslx.models import build_encoder

BASELINES = ("pixels", "random_init")


def random_init_network(model_cfg: ml_collections.ConfigDict, image_size: int,
                        rng: jax.Array) -> tuple[Callable[[Any, jax.Array], jax.Array], dict[str, Any]]:
    """`(apply(variables, images), variables)` of the encoder at a random initialisation, every residual branch on.

    Training starts each residual branch's last BN scale at 0, and the network at that init is only its
    stem and projection shortcuts, 1x1 stride-2 convs: after ResNet-18's three strided stages it keeps one
    stem position in 8 along each side, on the quickstart's 8 px digits the top-left corner alone (86
    distinct feature rows over 1,500 digits, probe top-1 0.17, against 0.86-0.90 with the branches on).
    """
    model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
    model_cfg.zero_init_residual = False
    encoder = build_encoder(model_cfg, None)
    variables = jax.jit(functools.partial(encoder.init, train=False))(
        rng, jnp.zeros((2, image_size, image_size, 3)))
    return functools.partial(encoder.apply, train=False), variables


def random_init_encode(model_cfg: ml_collections.ConfigDict, image_size: int,
                       rng: jax.Array) -> Callable[[jax.Array], jax.Array]:
    apply, variables = random_init_network(model_cfg, image_size, rng)
    return lambda images: apply(variables, images)


def pixels_encode(max_size: int) -> Callable[[jax.Array], jax.Array]:
    """The raw pixels as features, resized (anti-aliased) to at most `max_size` a side."""

    def encode(images: jax.Array) -> jax.Array:
        n, height, width, channels = images.shape
        if max(height, width) > max_size:
            scale = max_size / max(height, width)
            images = jax.image.resize(images, (n, round(height * scale), round(width * scale), channels),
                                      "linear", antialias=True)
        return images.reshape(n, -1)

    return encode


def check_baseline(config: ml_collections.ConfigDict) -> None:
    """An eval config's `baseline` names known features, and features that have no projection-head layers."""
    if config.baseline and config.baseline not in BASELINES:
        raise ValueError(f"config.baseline={config.baseline!r} is not one of {BASELINES} ('' for the pretrained "
                         f"encoder)")
    if config.baseline and config.head_layer != 0:
        raise ValueError(f"config.baseline={config.baseline!r} has no projection head: leave config.head_layer 0")


def frozen_features(config: ml_collections.ConfigDict, pretrained: Trained,
                    mesh: Mesh) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """`(apply(variables, images), variables)`: the features an evaluation stage reads, replicated on `mesh`.

    The pretrained network (encoder or head layer `config.head_layer`), or with `config.baseline` the raw pixels
    (resized to at most `config.pixel_size` a side) or the pretrained architecture at a random initialisation
    (seed `config.seed`).
    """
    if config.baseline == "pixels":
        encode = pixels_encode(config.pixel_size)
        return lambda variables, images: encode(images), {}
    if config.baseline == "random_init":
        apply, variables = random_init_network(pretrained.config.model, pretrained.config.data.image_size,
                                               jax.random.key(config.seed))
        return apply, parallel.replicate(variables, mesh)
    return (functools.partial(embed, pretrained.config, head_layer=config.head_layer),
            pretrained.variables)
