"""sslx-import-simclr: a SimCLR checkpoint written here with the official variable names and shapes (TF2 object-based
in a SavedModel, and TF1 name-based) computes in sslx what a TensorFlow forward pass of the same weights computes.

The reference below is SimCLR's ResNet written from its description (Chen et al. 2020 and 2020b, appendix; the
names from google-research/simclr tf2/resnet.py and tf2/model.py): ResNet-50 v1.5 at width 1/16 so it runs in
seconds, with TF's own padding and pooling conventions, which is what the importer has to reproduce.
"""
import json
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

import sslx
from sslx import cli, parallel
from sslx.data import augment
from sslx.checkpoint import Checkpointer
from sslx.evaluators.encoders import load_classifier, read_config
from sslx.methods import build_method

WIDTH = 1 / 16
STAGES = (3, 4, 6, 3)
EPS = 1e-5


class Reference:
    """SimCLR's network in plain TF ops. Variables are drawn on first use and named both ways: by their TF2 object
    path and, counting convs and BNs in the TF1 code's creation order, by their TF1 name."""

    def __init__(self, sk: bool, head_dims=(), num_classes=0, seed=0):
        self.sk, self.head_dims, self.num_classes = sk, head_dims, num_classes
        self.rng = np.random.default_rng(seed)
        self.tf2, self.tf1, self.counts = {}, {}, {"conv2d": 0, "batch_normalization": 0}

    def var(self, path, shape, tf1_layer=None, leaf=None, kind="normal"):
        if path not in self.tf2:
            value = {"normal": lambda: self.rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1]) or 1), shape),
                     "gamma": lambda: self.rng.uniform(0.5, 1.5, shape), "beta": lambda: self.rng.normal(0, 0.2, shape),
                     "mean": lambda: self.rng.normal(0, 0.2, shape),
                     "variance": lambda: self.rng.uniform(0.5, 2.0, shape)}[kind]()
            self.tf2[path] = value.astype(np.float32)
            if tf1_layer is not None:
                self.tf1[f"{tf1_layer}/{leaf}"] = self.tf2[path]
        return self.tf2[path]

    def tf1_name(self, kind, scope="base_model"):
        i = self.counts[kind]
        self.counts[kind] += 1
        return f"{scope}/{kind}" + (f"_{i}" if i else "")

    def conv(self, x, path, filters, kernel, strides):
        layer = self.tf1_name("conv2d")
        w = self.var(f"{path}/kernel", (kernel, kernel, x.shape[-1], filters), layer, "kernel")
        if strides > 1:   # fixed padding: (k - 1) // 2 before, the rest after, then VALID
            before = (kernel - 1) // 2
            x = tf.pad(x, [[0, 0], [before, kernel - 1 - before], [before, kernel - 1 - before], [0, 0]])
        return tf.nn.conv2d(x, w, strides, "SAME" if strides == 1 else "VALID")

    def bn(self, x, path, relu=True, center=True, tf1_layer=None):
        layer = tf1_layer or self.tf1_name("batch_normalization")
        n = x.shape[-1]
        gamma = self.var(f"{path}/gamma", (n,), layer, "gamma", "gamma")
        beta = self.var(f"{path}/beta", (n,), layer, "beta", "beta") if center else 0.0
        mean = self.var(f"{path}/moving_mean", (n,), layer, "moving_mean", "mean")
        var = self.var(f"{path}/moving_variance", (n,), layer, "moving_variance", "variance")
        x = tf.nn.batch_normalization(x, mean, var, beta, gamma, EPS)
        return tf.nn.relu(x) if relu else x

    def stem(self, x):
        path, channels = "resnet_model/initial_conv_relu_max_pool", int(64 * WIDTH)
        if self.sk:   # ResNet-D: three 3x3 convs, the first strided
            x = self.bn(self.conv(x, f"{path}/0/conv2d", channels // 2, 3, 2), f"{path}/1/bn")
            x = self.bn(self.conv(x, f"{path}/2/conv2d", channels // 2, 3, 1), f"{path}/3/bn")
            x = self.bn(self.conv(x, f"{path}/4/conv2d", channels, 3, 1), f"{path}/6/bn")
        else:
            x = self.bn(self.conv(x, f"{path}/0/conv2d", channels, 7, 2), f"{path}/2/bn")
        return tf.nn.max_pool2d(x, 3, 2, "SAME")

    def sk_conv(self, x, path, filters, strides):
        x = self.bn(self.conv(x, f"{path}/conv2d_fixed_padding/conv2d", 2 * filters, 3, strides),
                    f"{path}/batch_norm_relu/bn")
        branches = tf.stack(tf.split(x, 2, axis=-1))
        pooled = tf.reduce_mean(tf.reduce_sum(branches, 0), [1, 2], keepdims=True)
        mid = max(int(filters * 0.0625), 32)
        squeezed = self.bn(self.conv(pooled, f"{path}/conv2d_0", mid, 1, 1), f"{path}/batch_norm_relu_1/bn")
        mixing = tf.nn.softmax(tf.stack(tf.split(self.conv(squeezed, f"{path}/conv2d_1", 2 * filters, 1, 1), 2, -1)), 0)
        return tf.reduce_sum(branches * mixing, 0)

    def block(self, x, path, filters, strides, projection):
        shortcut = x
        if projection:
            proj = f"{path}/projection_layers"
            if self.sk:   # ResNet-D: average pool (2x2, at the block's stride), then a 1x1/1 conv
                if strides > 1:
                    shortcut = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, 2, "VALID")
                else:
                    shortcut = tf.nn.avg_pool2d(x, 2, 1, "SAME")
                first = 2 if strides > 1 else 1
                shortcut = self.conv(shortcut, f"{proj}/{first}/conv2d", 4 * filters, 1, 1)
            else:
                first = 0
                shortcut = self.conv(x, f"{proj}/0/conv2d", 4 * filters, 1, strides)
            shortcut = self.bn(shortcut, f"{proj}/{first + 1}/bn", relu=False)
        main = f"{path}/conv_relu_dropblock_layers"
        x = self.bn(self.conv(x, f"{main}/0/conv2d", filters, 1, 1), f"{main}/1/bn")
        if self.sk:
            x = self.sk_conv(x, f"{main}/3", filters, strides)
            x = self.bn(self.conv(x, f"{main}/5/conv2d", 4 * filters, 1, 1), f"{main}/6/bn", relu=False)
        else:
            x = self.bn(self.conv(x, f"{main}/3/conv2d", filters, 3, strides), f"{main}/4/bn")
            x = self.bn(self.conv(x, f"{main}/6/conv2d", 4 * filters, 1, 1), f"{main}/7/bn", relu=False)
        return tf.nn.relu(x + shortcut)

    def __call__(self, images):
        x = self.stem(tf.constant(images))
        for group, blocks in enumerate(STAGES):
            for index in range(blocks):
                x = self.block(x, f"resnet_model/block_groups/{group}/layers/{index}", int(64 * 2**group * WIDTH),
                               2 if group > 0 and index == 0 else 1, index == 0)
        hiddens = [tf.reduce_mean(x, [1, 2])]
        for j, dim in enumerate(self.head_dims):   # Dense without bias, BN (beta except last), ReLU except last
            last = j == len(self.head_dims) - 1
            path = f"_projection_head/linear_layers/{j}"
            h = hiddens[-1] @ self.var(f"{path}/dense/kernel", (hiddens[-1].shape[-1], dim),
                                       f"head_contrastive/nl_{j}/dense", "kernel")
            hiddens.append(self.bn(h, f"{path}/bn_relu/bn", relu=not last, center=not last,
                                   tf1_layer=f"head_contrastive/nl_{j}/batch_normalization"))
        out = {"features": hiddens[0].numpy(), "hiddens": [h.numpy() for h in hiddens]}
        if self.num_classes:
            layer = "head_supervised/linear_layer/dense"
            kernel = self.var("supervised_head/linear_layer/dense/kernel", (hiddens[0].shape[-1], self.num_classes),
                              layer, "kernel")
            bias = self.var("supervised_head/linear_layer/dense/bias", (self.num_classes,), layer, "bias", "beta")
            out["logits"] = (hiddens[0] @ kernel + bias).numpy()
        return out


def save_tf2_saved_model(values, directory):
    """A SavedModel whose root has the TF2 Model as attribute `model` (as tf2/run.py's export): object paths."""
    model = tf.Module()
    for path, value in values.items():
        node, (*parents, leaf) = model, path.split("/")
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        setattr(node, leaf, tf.Variable(value))
    root = tf.Module()
    root.model, root.global_step = model, tf.Variable(1234, dtype=tf.int64)
    tf.saved_model.save(root, str(directory))


def save_tf1_checkpoint(values, prefix):
    names = sorted(values) + ["global_step", "base_model/conv2d/kernel/Momentum"]
    tensors = [tf.constant(values[n]) for n in sorted(values)] + [tf.constant(77, tf.int64),
                                                                    tf.constant(values["base_model/conv2d/kernel"])]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


def run_import(monkeypatch, checkpoint, out, *extra):
    monkeypatch.setattr(sys, "argv", ["sslx-import-simclr", "--checkpoint", str(checkpoint), "--out", str(out), *extra])
    cli.import_simclr()


def sslx_outputs(workdir, images, num_classes):
    """sslx's whole SimCLR network (encoder, projection head, the supervised head as its probe) from the workdir."""
    config = read_config(workdir)
    network = build_method(config, num_classes, 1).network(None)
    shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), images[:1], train=False))
    sharding = parallel.replicated(parallel.make_mesh())
    like = {k: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes[k])
            for k in ("params", "batch_stats")}
    checkpointer = Checkpointer(str(workdir), keep=1, every_steps=1)
    try:
        _, variables = checkpointer.restore_subtree(like)
    finally:
        checkpointer.close()
    return jax.device_get(jax.jit(lambda v, x: network.apply(v, x, train=False))(variables, images))


def test_simclr_v2_sk_saved_model_matches_tensorflow(tmp_path, monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    inputs = augment.eval_preprocess(images, 48, 1.0).numpy()
    reference = Reference(sk=True, head_dims=(128, 128, 16), num_classes=10)
    expected = reference(inputs)
    save_tf2_saved_model(reference.tf2, tmp_path / "r50_sk1" / "saved_model")
    run_import(monkeypatch, tmp_path / "r50_sk1" / "saved_model", tmp_path / "run", "--image-size", "48")

    info = json.loads((tmp_path / "run" / "import.json").read_text())
    assert (info["format"], info["depth"], info["width"], info["sk_ratio"], info["step"]) == ("tf2", 50, WIDTH,
                                                                                             0.0625, 1234)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["tf_pooling"] and config["head"]["num_layers"] == 3
    np.testing.assert_allclose(sslx.load_encoder(tmp_path / "run").embed(images), expected["features"],
                               rtol=1e-4, atol=1e-4)
    out = sslx_outputs(tmp_path / "run", inputs, 10)
    np.testing.assert_allclose(out["hiddens"][1], expected["hiddens"][1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["z"], expected["hiddens"][-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["probe_logits"], expected["logits"], rtol=1e-4, atol=1e-4)

    # The same weights read as a v2 fine-tuned model (supervised head on head layer 1): a distillation teacher.
    run_import(monkeypatch, tmp_path / "r50_sk1" / "saved_model", tmp_path / "teacher", "--image-size", "48",
               "--ft-proj-selector", "1")
    teacher = load_classifier(str(tmp_path / "teacher"), -1, parallel.make_mesh())
    kernel, bias = (reference.tf2[f"supervised_head/linear_layer/dense/{k}"] for k in ("kernel", "bias"))
    np.testing.assert_allclose(jax.jit(teacher.predict_fn())(inputs), expected["hiddens"][1] @ kernel + bias,
                               rtol=1e-4, atol=1e-4)


def test_simclr_v1_tf1_checkpoint_matches_tensorflow(tmp_path, monkeypatch):
    images = np.random.default_rng(2).random((3, 32, 32, 3)).astype(np.float32)
    reference = Reference(sk=False, num_classes=10)   # SimCLR v1's releases: no projection head
    expected = reference(images)
    save_tf1_checkpoint(reference.tf1, tmp_path / "model.ckpt-77")
    run_import(monkeypatch, tmp_path / "model.ckpt-77", tmp_path / "run", "--image-size", "32")
    info = json.loads((tmp_path / "run" / "import.json").read_text())
    assert (info["format"], info["sk_ratio"], info["stem"], info["step"]) == ("tf1", 0.0, "imagenet", 77)
    assert "randomly initialised" in info["projection_head"]
    np.testing.assert_allclose(sslx.load_encoder(tmp_path / "run").embed(images), expected["features"],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sslx_outputs(tmp_path / "run", images, 10)["probe_logits"], expected["logits"],
                               rtol=1e-4, atol=1e-4)


def test_not_a_simclr_checkpoint_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "other"), tensor_names=["dense/kernel"], shape_and_slices=[""],
                      tensors=[tf.zeros([2, 2])])
    for checkpoint, message in ((tmp_path / "other", "is not a SimCLR checkpoint"),
                                (tmp_path / "missing", "not found")):
        with pytest.raises(SystemExit):
            run_import(monkeypatch, checkpoint, tmp_path / "run")
        error = capsys.readouterr().err
        assert error.startswith("sslx-import-simclr: error:") and message in error and error.count("\n") == 1
