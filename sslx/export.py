"""`sslx-export`: a workdir's encoder as framework-neutral weights and as a TensorFlow SavedModel.

DIR/weights.npz   every variable as a float32 array named `<collection>/<module>/.../<name>` (collection `params`
                  or `batch_stats`): flax.traverse_util.unflatten_dict(..., sep="/") gives back the variables of
                  sslx's encoder, or {'encoder', 'head'} of EncoderWithHead with the head.
DIR/model.json    the architecture (kernel layouts, BatchNorm epsilon, stem, blocks, head), the preprocessing, the
                  output, the step and the full pretraining config (to rebuild it in sslx).
DIR/saved_model/  jax2tf (native serialization, for cpu, cuda and tpu by default) under a tf.Module holding the
                  weights as variables. Signatures: `serving_default` takes uint8 images [N, H, W, 3] of any size
                  and applies the run's evaluation preprocessing; `preprocessed` takes float32 [N, S, S, 3] in
                  [0, 1] already preprocessed. Both return {'features'} (and 'projection' with --head).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from etils import epath
from flax import traverse_util
from jax.experimental import jax2tf

from sslx.data import augment
from sslx.encoder import Encoder, load_encoder
from sslx.evaluators.encoders import EncoderWithHead, embed
from sslx.models import build_encoder, build_head

PLATFORMS = ("cpu", "cuda", "tpu")


def exported_variables(encoder: Encoder, with_head: bool) -> dict[str, Any]:
    """Host copies of the variables the export needs: the encoder's, or {'encoder', 'head'} with the head."""
    variables = jax.device_get(encoder.pretrained.variables)
    parts = ("encoder", "head") if with_head else ("encoder",)
    # A part without BatchNorm (a ViT encoder) has no batch_stats, and a collection without any is left out.
    exported = {collection: {part: tree[part] for part in parts if part in tree}
                for collection, tree in variables.items()}
    exported = {collection: tree for collection, tree in exported.items() if tree}
    return exported if with_head else {collection: tree["encoder"] for collection, tree in exported.items()}


def describe(encoder: Encoder, with_head: bool, variables: dict[str, Any]) -> dict[str, Any]:
    """model.json: what another framework needs to rebuild the network and feed it."""
    config = encoder.config
    backbone = build_encoder(config.model, None)
    head = build_head(config, None)
    return {
        "format": "sslx-export/1",
        "step": encoder.pretrained.step,
        "method": config.method,
        "workdir": str(encoder.pretrained.workdir),
        "weights": {"file": "weights.npz", "names": "<collection>/<module path>/<variable>",
                    "kernel_layout": {"conv": "HWIO", "dense": "IO"}, "layout": "NHWC",
                    "modules": "encoder and head" if with_head else "encoder",
                    "shapes": {name: list(value.shape) for name, value in flatten(variables).items()}},
        "architecture": {
            "encoder": {"name": config.model.name, **backbone.describe()},
            "head": {"num_layers": head.num_layers, "hidden_dim": head.hidden_dim or backbone.feature_dim,
                     "out_dim": head.out_dim, "use_bn": head.use_bn, "final_bn": head.final_bn,
                     "batch_norm_epsilon": head.bn_epsilon} if with_head else None,
        },
        "preprocessing": {"input": "RGB, uint8 0..255 or float 0..1", "scale": "x / 255 to [0, 1], no mean/std",
                          "crop": "centre square, side = crop_fraction * shorter side",
                          "crop_fraction": encoder.crop_fraction, "resize": "bilinear",
                          "image_size": encoder.image_size},
        "output": {"features": {"head_layer": encoder.head_layer, "dim": encoder.dim}},
        "config": config.to_dict(),
    }


def flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in traverse_util.flatten_dict(variables, sep="/").items()}


def load_weights(path: str) -> dict[str, Any]:
    """weights.npz back to a nested {'params', 'batch_stats'} tree."""
    with epath.Path(path).open("rb") as f, np.load(f) as arrays:
        return traverse_util.unflatten_dict({name: arrays[name] for name in arrays.files}, sep="/")


def network_fn(encoder: Encoder, with_head: bool):
    """variables, images [N,S,S,3] in [0, 1] -> {'features'} (and 'projection' with the head), in eval mode."""
    config, layer = encoder.config, encoder.head_layer

    def apply(variables, images):
        if not with_head:
            return {"features": embed(config, {k: {"encoder": v} for k, v in variables.items()}, images, layer)}
        z, hiddens = EncoderWithHead(build_encoder(config.model, None), build_head(config, None)).apply(
            variables, images, train=False)
        return {"features": hiddens[layer], "projection": z}
    return apply


def saved_model(encoder: Encoder, variables: dict[str, Any], with_head: bool, platforms: tuple[str, ...]) -> tf.Module:
    size, crop = encoder.image_size, encoder.crop_fraction
    module = tf.Module()
    # tf.Variables, not constants: the weights sit in the SavedModel's variables/, and graphs stay small.
    module.weights = tf.nest.map_structure(tf.Variable, variables)
    network = jax2tf.convert(network_fn(encoder, with_head), polymorphic_shapes=[None, "(b, ...)"],
                             with_gradient=False, native_serialization_platforms=platforms)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, "images")])
    def preprocessed(images):
        return network(module.weights, images)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")])
    def serving_default(images):
        return network(module.weights, augment.eval_preprocess(images, size, crop))

    module.preprocessed, module.serving_default = preprocessed, serving_default
    return module


def export(workdir: str, out: str, *, step: int | None = None, head_layer: int = 0, with_head: bool = False,
           platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
    """Writes weights.npz, model.json and saved_model/ under `out`; returns the model.json contents."""
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ValueError(f"--platforms {','.join(platforms)}: use a comma-separated subset of {','.join(PLATFORMS)}")
    encoder = load_encoder(workdir, step, head_layer)
    with_head = with_head or head_layer > 0
    variables = exported_variables(encoder, with_head)
    description = describe(encoder, with_head, variables)
    out_dir = epath.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "weights.npz").open("wb") as f:
        np.savez(f, **flatten(variables))
    (out_dir / "model.json").write_text(json.dumps(description, indent=1))
    module = saved_model(encoder, variables, with_head, tuple(platforms))
    tf.saved_model.save(module, str(out_dir / "saved_model"), signatures={
        "serving_default": module.serving_default, "preprocessed": module.preprocessed})
    return description


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sslx-export", description="A workdir's encoder as weights.npz + "
                                     "model.json and a TensorFlow SavedModel.")
    parser.add_argument("--workdir", required=True, help="pretraining (or sslx-import-simclr) workdir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--head-layer", type=int, default=0,
                        help="what 'features' is: 0 the encoder output, i projection-head layer i")
    parser.add_argument("--head", action="store_true", help="also export the projection head ('projection')")
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="where the SavedModel may run")
    args = parser.parse_args(argv)
    description = export(args.workdir, args.out, step=args.step, head_layer=args.head_layer, with_head=args.head,
                         platforms=tuple(p for p in args.platforms.split(",") if p))
    print(f"sslx-export: step {description['step']} of {args.workdir} -> {args.out}/weights.npz, model.json, "
          f"saved_model/ (features: {description['output']['features']['dim']})")

