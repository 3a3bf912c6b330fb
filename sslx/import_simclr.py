"""`sslx-import-simclr`: google-research/simclr TensorFlow checkpoints (v1 and v2) as an sslx pretraining workdir.

Two formats are read, both with tf.train.load_checkpoint:
  * TF2 object-based checkpoints of `tf2/model.py`'s Model: the released SavedModels (their variables/) and
    tf2/run.py's checkpoints; keys `model/resnet_model/...`, `model/_projection_head/...`,
    `model/supervised_head/...` (from the attribute names in tf2/resnet.py and tf2/model.py).
  * TF1 name-based checkpoints (`model.ckpt-N`, the TF1 code): `base_model/conv2d[_i]/kernel` and
    `base_model/batch_normalization[_i]/...` numbered in creation order, `head_contrastive/nl_j/...`,
    `head_supervised/linear_layer/dense/...`.

The architecture (depth 50/101/152/200, width, selective kernels and their ratio, stem, projection head, supervised
head) is read off the variables' names and shapes. How SimCLR's ResNet maps onto sslx's:
  * same: ResNet v1.5 bottlenecks (stride on the 3x3 conv), BatchNorm epsilon 1e-5 and decay 0.9, symmetric
    fixed padding of strided convs, the ResNet-D deep stem and 2x2/2 average-pooled shortcut with SK, SK's
    attention width max(filters * sk_ratio, 32), the projection head (Dense without bias, BN with beta except on
    the last layer, ReLU between);
  * split: SK's one 3x3 conv to 2 x filters channels and its one BN become sslx's two branches (first half
    branch0, second half branch1), as are the attention logits;
  * pooled differently: TF's SAME max-pool padding and, with SK, a 2x2/1 average pool on stage 1's projection
    shortcut; `config.model.tf_pooling=True` makes sslx pool the same way;
  * renamed: the supervised head (SimCLR's linear eval during pretraining, on the encoder output) becomes sslx's
    online probe (`params['probe']`); of a fine-tuned checkpoint (`--ft-proj-selector K`, the flag its fine-tuning
    ran with, 1 for the released v2 fine-tuned models) it becomes the classifier of an sslx-finetune workdir
    (`params['classifier']` on head layer K), which sslx-distill takes as teacher.
SimCLR's SK on basic blocks (ResNet-18/34) also pools the residual branch's input in the TF1 code; those are not
imported (every released checkpoint is a bottleneck ResNet).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from etils import epath
from flax import traverse_util

from sslx import models
from sslx.checkpoint import Checkpointer
from sslx.config import base_config
from sslx.methods import build_method
from sslx.models import build_head

DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152, (3, 24, 36, 3): 200}
SK_MIN_DIM = 32
TF2_PREFIX, TF2_SUFFIX = "model/", "/.ATTRIBUTES/VARIABLE_VALUE"
BN_PARAMS = {"gamma": ("params", "scale"), "beta": ("params", "bias"),
             "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var")}


@dataclasses.dataclass(frozen=True)
class Architecture:
    stage_sizes: tuple[int, ...]
    sk: bool
    stem: str                 # 'imagenet' (7x7/2 + max-pool), 'deep' (SK: three 3x3), 'cifar' (3x3/1)
    width: float
    sk_ratio: float = 0.0
    head_dims: tuple[int, ...] = ()   # output width of each projection-head layer; () if absent
    num_classes: int = 0              # supervised head; 0 if absent

    @property
    def depth(self) -> int:
        return DEPTHS[self.stage_sizes]


def layout(arch: Architecture) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, SimCLR TF2 path, sslx module path) of every conv and BN of the encoder, in the TF1 code's creation
    order (which numbers its conv2d_i / batch_normalization_i). Kinds: conv, bn, sk_conv, sk_bn (split in two)."""
    stem = "resnet_model/initial_conv_relu_max_pool"
    if arch.stem == "deep":
        entries = [("conv", f"{stem}/0/conv2d", ("stem1_conv",)), ("bn", f"{stem}/1/bn", ("stem1_bn",)),
                   ("conv", f"{stem}/2/conv2d", ("stem2_conv",)), ("bn", f"{stem}/3/bn", ("stem2_bn",)),
                   ("conv", f"{stem}/4/conv2d", ("stem_conv",)), ("bn", f"{stem}/6/bn", ("stem_bn",))]
    else:   # conv, an identity layer named initial_conv, then BN
        entries = [("conv", f"{stem}/0/conv2d", ("stem_conv",)), ("bn", f"{stem}/2/bn", ("stem_bn",))]
    for group, blocks in enumerate(arch.stage_sizes):
        for index in range(blocks):
            tf_block = f"resnet_model/block_groups/{group}/layers/{index}"
            block = f"stage{group + 1}_block{index + 1}"
            if index == 0:   # projection_layers: [FixedPadding if strided, AvgPool] with SK, then conv, BN
                first = (2 if group > 0 else 1) if arch.sk else 0
                entries += [("conv", f"{tf_block}/projection_layers/{first}/conv2d", (block, "proj_conv")),
                            ("bn", f"{tf_block}/projection_layers/{first + 1}/bn", (block, "proj_bn"))]
            main = f"{tf_block}/conv_relu_dropblock_layers"   # DropBlock layers sit between, without variables
            entries += [("conv", f"{main}/0/conv2d", (block, "block1_conv")),
                        ("bn", f"{main}/1/bn", (block, "block1_bn"))]
            if arch.sk:
                entries += [("sk_conv", f"{main}/3/conv2d_fixed_padding/conv2d", (block, "block2_sk")),
                            ("sk_bn", f"{main}/3/batch_norm_relu/bn", (block, "block2_sk")),
                            ("conv", f"{main}/3/conv2d_0", (block, "block2_sk", "squeeze")),
                            ("bn", f"{main}/3/batch_norm_relu_1/bn", (block, "block2_sk", "squeeze_bn")),
                            ("conv", f"{main}/3/conv2d_1", (block, "block2_sk", "attention")),
                            ("conv", f"{main}/5/conv2d", (block, "block3_conv")),
                            ("bn", f"{main}/6/bn", (block, "block3_bn"))]
            else:
                entries += [("conv", f"{main}/3/conv2d", (block, "block2_conv")),
                            ("bn", f"{main}/4/bn", (block, "block2_bn")),
                            ("conv", f"{main}/6/conv2d", (block, "block3_conv")),
                            ("bn", f"{main}/7/bn", (block, "block3_bn"))]
    return entries


class Source:
    """A SimCLR checkpoint's variables by their TF2 path (without the `model/` prefix)."""

    def __init__(self, path: str):
        self.prefix = checkpoint_prefix(path)
        self.reader = tf.train.load_checkpoint(self.prefix)
        shapes = self.reader.get_variable_to_shape_map()
        if any(name.startswith(TF2_PREFIX + "resnet_model/") for name in shapes):
            self.format = "tf2"
            self.names = {name[len(TF2_PREFIX):-len(TF2_SUFFIX)]: name for name in shapes
                          if name.startswith(TF2_PREFIX) and name.endswith(TF2_SUFFIX)}
        elif any(name.startswith("base_model/") for name in shapes):
            self.format = "tf1"
            self.names = {}
        else:
            raise ValueError(f"{self.prefix} is not a SimCLR checkpoint: no model/resnet_model/... (TF2) or "
                             f"base_model/... (TF1) variables; it has e.g. {sorted(shapes)[:3]}")
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.used: set[str] = set()

    def shape(self, path: str) -> tuple[int, ...] | None:
        name = self.names.get(path)
        return None if name is None else self.shapes[name]

    def get(self, path: str) -> np.ndarray:
        if path not in self.names:
            raise ValueError(f"{self.prefix} has no variable for {path} ({self.format} checkpoint): not a SimCLR "
                             f"ResNet of the architecture its other variables describe")
        self.used.add(self.names[path])
        return np.asarray(self.reader.get_tensor(self.names[path]), np.float32)

    def step(self) -> int:
        for name in ("global_step" + TF2_SUFFIX, "global_step"):
            if name in self.shapes:
                return int(self.reader.get_tensor(name))
        return 0

    def name_tf1(self, arch: Architecture) -> None:
        """Gives the TF1 names their TF2 paths: convs and BNs by creation order, heads by name."""
        counters = {"conv": 0, "bn": 0}
        for kind, path, _ in layout(arch):
            base = "conv" if kind.endswith("conv") else "bn"
            i = counters[base]
            counters[base] += 1
            layer = ("conv2d" if base == "conv" else "batch_normalization") + (f"_{i}" if i else "")
            for leaf in (("kernel",) if base == "conv" else tuple(BN_PARAMS)):
                self.names[f"{path}/{leaf}"] = f"base_model/{layer}/{leaf}"
        j = 0
        while f"head_contrastive/nl_{j}/dense/kernel" in self.shapes:
            for leaf in ("dense/kernel", *(f"bn_relu/bn/{k}" for k in BN_PARAMS)):
                self.names[f"_projection_head/linear_layers/{j}/{leaf}"] = (
                    f"head_contrastive/nl_{j}/" + leaf.replace("bn_relu/bn", "batch_normalization"))
            j += 1
        for leaf in ("kernel", "bias"):
            self.names[f"supervised_head/linear_layer/dense/{leaf}"] = f"head_supervised/linear_layer/dense/{leaf}"
        self.names = {path: name for path, name in self.names.items() if name in self.shapes}

    def unused(self) -> list[str]:
        """Model variables not imported (optimizer slots, EMA copies and counters are not model variables)."""
        skip = re.compile(r"(Momentum|OPTIMIZER_SLOT|optimizer|ema_model|global_step|save_counter|"
                          r"_CHECKPOINTABLE_OBJECT_GRAPH|trainable_variables_list)")
        return sorted(n for n in self.shapes if n not in self.used and not skip.search(n))


def checkpoint_prefix(path: str) -> str:
    """A checkpoint prefix from a prefix, a directory holding checkpoints, or a SavedModel directory."""
    if tf.io.gfile.exists(f"{path}/saved_model.pb"):
        return f"{path}/variables/variables"
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {path}: pass a checkpoint prefix (model.ckpt-N, ckpt-N) or a "
                                    f"SavedModel directory")
        return latest
    if not tf.io.gfile.exists(f"{path}.index"):
        raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index): pass a checkpoint prefix such as "
                                f"r50_1x_sk0/model.ckpt-250228, a directory of checkpoints or a SavedModel directory")
    return path


def infer_architecture(source: Source) -> Architecture:
    return _infer_tf2(source) if source.format == "tf2" else _infer_tf1(source)


def _infer_tf2(source: Source) -> Architecture:
    blocks = {}
    for path in source.names:
        match = re.match(r"resnet_model/block_groups/(\d+)/layers/(\d+)/", path)
        if match:
            blocks[int(match[1])] = max(blocks.get(int(match[1]), 0), int(match[2]) + 1)
    stage_sizes = tuple(blocks[g] for g in sorted(blocks))
    sk = any("/conv2d_0/" in path for path in source.names)
    stem_convs = sorted(p for p in source.names if re.match(r"resnet_model/initial_conv_relu_max_pool/\d+/conv2d/", p))
    first = source.shape(stem_convs[0])
    stem = "deep" if len(stem_convs) == 3 else ("imagenet" if first[0] == 7 else "cifar")
    return _complete(source, stage_sizes, sk, stem)


def _infer_tf1(source: Source) -> Architecture:
    """TF1 names carry no structure: the conv count singles out depth, SK and stem, with the first kernel's size."""
    convs = sum(1 for name in source.shapes if re.fullmatch(r"base_model/conv2d(_\d+)?/kernel", name))
    first = source.shapes.get("base_model/conv2d/kernel", (0,))[0]
    for stage_sizes in DEPTHS:
        for sk, stem in ((False, "imagenet"), (False, "cifar"), (True, "deep"), (True, "cifar")):
            arch = Architecture(stage_sizes, sk, stem, 1.0)
            if (first == 7) == (stem == "imagenet") and convs == sum(k.endswith("conv") for k, _, _ in layout(arch)):
                source.name_tf1(arch)
                return _complete(source, stage_sizes, sk, stem)
    raise ValueError(f"{source.prefix}: {convs} conv layers match no SimCLR ResNet-50/101/152/200 with or without SK")


def _complete(source: Source, stage_sizes: tuple[int, ...], sk: bool, stem: str) -> Architecture:
    if stage_sizes not in DEPTHS:
        raise ValueError(f"{source.prefix}: blocks per stage {stage_sizes} are no bottleneck ResNet-50/101/152/200 "
                         f"(SimCLR's ResNet-18/34 are not imported)")
    stem_out = source.shape("resnet_model/initial_conv_relu_max_pool/4/conv2d/kernel" if stem == "deep"
                            else "resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel")[-1]
    width = stem_out / 64
    sk_ratio = 0.0
    if sk:   # the attention width is max(int(filters * ratio), 32): any ratio reproducing every width will do
        mids = [(64 * 2**g * width, source.shape(
            f"resnet_model/block_groups/{g}/layers/0/conv_relu_dropblock_layers/3/conv2d_0/kernel")[-1])
            for g in range(4)]
        unclamped = [mid / filters for filters, mid in mids if mid > SK_MIN_DIM]
        sk_ratio = unclamped[-1] if unclamped else 0.0625   # SimCLRv2's ratio
        if any(max(int(filters * sk_ratio), SK_MIN_DIM) != mid for filters, mid in mids):
            raise ValueError(f"{source.prefix}: SK attention widths {[m for _, m in mids]} fit no single sk_ratio")
    head_dims = []
    while (shape := source.shape(f"_projection_head/linear_layers/{len(head_dims)}/dense/kernel")) is not None:
        head_dims.append(shape[-1])
    classes = source.shape("supervised_head/linear_layer/dense/kernel")
    return Architecture(stage_sizes, sk, stem, width, sk_ratio, tuple(head_dims), classes[-1] if classes else 0)


def sslx_config(arch: Architecture, image_size: int, ft_proj_selector: int = -1) -> ml_collections.ConfigDict:
    """A pretraining config that rebuilds the checkpoint's network in sslx (SimCLR's ImageNet setting), plus
    sslx-finetune's head_layers and num_classes for a fine-tuned checkpoint (ft_proj_selector >= 0)."""
    c = base_config()
    c.method = "simclr"
    c.data.name, c.data.image_size, c.data.eval_split = "imagenet2012", image_size, "validation"
    c.augment.preset = "imagenet"
    c.loss.temperature = 0.1
    c.model.name, c.model.width = f"resnet{arch.depth}", arch.width
    c.model.cifar_stem, c.model.sk_ratio, c.model.tf_pooling = arch.stem == "cifar", arch.sk_ratio, True
    feature_dim = int(2048 * arch.width)
    dims = arch.head_dims or (feature_dim, feature_dim, 128)   # none saved (SimCLR v1): SimCLRv2's, freshly drawn
    c.head.version = "v2" if len(dims) == 3 else "v1"
    c.head.num_layers = len(dims)
    c.head.hidden_dim = -1 if dims[0] == feature_dim or len(dims) == 1 else dims[0]
    c.head.out_dim = dims[-1]
    c.probe.online = arch.num_classes > 0 and ft_proj_selector < 0
    if ft_proj_selector >= 0:
        if not arch.num_classes:
            raise ValueError("--ft-proj-selector is for fine-tuned checkpoints, and this one has no supervised head")
        if not (ft_proj_selector == 0 or ft_proj_selector < len(arch.head_dims)):
            top = max(len(arch.head_dims) - 1, 0)
            raise ValueError(f"--ft-proj-selector={ft_proj_selector} must lie in [0, {top}] "
                             f"(the projection-head layer the supervised head reads; 0: the encoder output)")
        c.head_layers, c.num_classes = ft_proj_selector, arch.num_classes
    return c


def convert(source: Source, arch: Architecture, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{'params', 'batch_stats'} of sslx's SimCLR network holding the checkpoint's weights, checked leaf by leaf."""
    method = build_method(config, arch.num_classes, 1)
    size = config.data.image_size
    params, batch_stats, _ = jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    flat = {("params", *k): v for k, v in traverse_util.flatten_dict(params).items()}
    flat.update({("batch_stats", *k): v for k, v in traverse_util.flatten_dict(batch_stats).items()})
    filled: dict[tuple[str, ...], np.ndarray] = {}

    def put(collection, path, value):
        key = (collection, *path)
        if key not in flat or flat[key].shape != value.shape:
            raise ValueError(f"{source.prefix}: {'/'.join(path)} gets shape {value.shape}, sslx's network expects "
                             f"{flat[key].shape if key in flat else 'no such variable'}")
        filled[key] = value

    def put_bn(tf_path, path, halves=None):
        for tf_name, (collection, leaf) in BN_PARAMS.items():
            if tf_name == "beta" and source.shape(f"{tf_path}/beta") is None:
                continue   # the projection head's last BN has no beta (and sslx's no bias)
            value = source.get(f"{tf_path}/{tf_name}")
            for i, part in enumerate(np.split(value, 2) if halves else [value]):
                put(collection, (*path, *(halves[i] if halves else ()), leaf), part)

    for kind, tf_path, module in layout(arch):
        path = ("encoder", *module)
        if kind == "conv":
            put("params", (*path, "kernel"), source.get(f"{tf_path}/kernel"))
        elif kind == "sk_conv":   # one conv to 2 x filters channels: its halves are sslx's two branches
            for i, part in enumerate(np.split(source.get(f"{tf_path}/kernel"), 2, axis=-1)):
                put("params", (*path, f"branch{i}_conv", "kernel"), part)
        elif kind == "sk_bn":
            put_bn(tf_path, path, halves=(("branch0_bn",), ("branch1_bn",)))
        else:
            put_bn(tf_path, path)
    for j in range(len(arch.head_dims)):
        put("params", ("head", f"dense{j}", "kernel"),
            source.get(f"_projection_head/linear_layers/{j}/dense/kernel"))
        put_bn(f"_projection_head/linear_layers/{j}/bn_relu/bn", ("head", f"bn{j}"))
    if arch.num_classes:
        for leaf in ("kernel", "bias"):
            value = source.get(f"supervised_head/linear_layer/dense/{leaf}")
            if "head_layers" in config:   # a fine-tuned classifier: no probe in the network to check against
                flat[("params", "classifier", "Dense_0", leaf)] = jax.ShapeDtypeStruct(
                    ((head_width(config, config.head_layers),) if leaf == "kernel" else ()) + (arch.num_classes,),
                    np.float32)
            put("params", ("probe" if "head_layers" not in config else "classifier", "Dense_0", leaf), value)
    left = source.unused()
    if left:
        raise ValueError(f"{source.prefix}: {len(left)} variables have no place in sslx's network, e.g. {left[0]}")
    if not arch.head_dims:
        filled.update(fresh_head(config))
    missing = [key for key in flat if key not in filled]
    if missing:
        raise ValueError(f"{source.prefix}: nothing in the checkpoint for sslx's {'/'.join(missing[0])}")
    return traverse_util.unflatten_dict(filled)


def fresh_head(config: ml_collections.ConfigDict) -> dict[tuple[str, ...], np.ndarray]:
    """A randomly initialised projection head, for checkpoints released without theirs (SimCLR v1)."""
    features = jnp.zeros((1, models.feature_dim(config.model)))
    variables = jax.device_get(build_head(config, None).init(jax.random.key(0), features, train=False))
    return {(collection, "head", *k): v for collection, tree in variables.items()
            for k, v in traverse_util.flatten_dict(tree).items()}


def head_width(config: ml_collections.ConfigDict, layer: int) -> int:
    """Width of hiddens[layer]: the encoder's features (0) or a hidden projection-head layer."""
    features = models.feature_dim(config.model)
    return features if layer == 0 or config.head.hidden_dim <= 0 else config.head.hidden_dim


def import_checkpoint(checkpoint: str, out: str, image_size: int | None = None,
                      ft_proj_selector: int = -1) -> dict[str, Any]:
    """Writes `out`/config.json, an orbax checkpoint of {'params', 'batch_stats'} and import.json."""
    source = Source(checkpoint)
    arch = infer_architecture(source)
    size = image_size or (32 if arch.stem == "cifar" else 224)
    config = sslx_config(arch, size, ft_proj_selector)
    variables = convert(source, arch, config)
    step = source.step()
    out_dir = epath.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(str(out_dir), keep=1, every_steps=1)
    try:
        checkpointer.save(step, jax.tree.map(jnp.asarray, variables), force=True)
    finally:
        checkpointer.close()
    (out_dir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    info = {"checkpoint": source.prefix, "format": source.format, "step": step, "depth": arch.depth,
            "width": arch.width, "sk_ratio": arch.sk_ratio, "stem": arch.stem,
            "projection_head": list(arch.head_dims) or "absent in the checkpoint: randomly initialised",
            "supervised_head_classes": arch.num_classes,
            "supervised_head": "probe" if ft_proj_selector < 0 else f"classifier on head layer {ft_proj_selector}"}
    (out_dir / "import.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sslx-import-simclr", description="A google-research/simclr TF checkpoint "
                                     "(v1 or v2) as an sslx pretraining workdir.")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint prefix (model.ckpt-N, ckpt-N), a directory of checkpoints, or a SavedModel")
    parser.add_argument("--out", required=True, help="the sslx workdir to write")
    parser.add_argument("--image-size", type=int, default=None,
                        help="config.data.image_size (default 224; 32 for a CIFAR stem)")
    parser.add_argument("--ft-proj-selector", type=int, default=-1,
                        help="a fine-tuned checkpoint: the head layer its supervised head reads (SimCLR's flag; "
                             "1 for the released v2 fine-tuned models); writes an sslx-finetune workdir")
    args = parser.parse_args(argv)
    info = import_checkpoint(args.checkpoint, args.out, args.image_size, args.ft_proj_selector)
    print(f"sslx-import-simclr: ResNet-{info['depth']} {info['width']:g}x SK {info['sk_ratio']:g} ({info['format']}, "
          f"step {info['step']}) -> {args.out}")
