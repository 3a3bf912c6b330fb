"""The data-parallel SimCLR step: 1 device on the global batch == 8 devices, for loss and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import parallel
from sslx.config import base_config
from sslx.methods import build_method
from sslx.train import create_train_state, make_train_step

GLOBAL_BATCH = 16
SIZE = 8


def tiny_config(bn="global"):
    c = base_config()
    c.model.name = "resnet18"
    c.model.width = 0.125
    c.model.bn = bn
    c.head.version = "v2"
    c.head.hidden_dim = 32
    c.head.out_dim = 16
    c.loss.temperature = 0.2
    return c


def batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=(GLOBAL_BATCH,)).astype(np.int32)
    # Unlabelled rows (-1) spread unevenly over the 8 replicas (2 rows each): none, one or both of a
    # replica's rows; the online probe's loss and gradients must still be those of the global batch.
    labels[[0, 1, 2, 11]] = -1
    return {"views": tuple(rng.uniform(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)),
            "label": labels}


def one_step(config, num_devices, data):
    """Plain SGD with learning rate 1: the parameter change is exactly minus the gradient."""
    method = build_method(config, num_classes=10, total_steps=10)
    optimizer = optax.sgd(1.0)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    state = create_train_state(method, optimizer, jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)))
    before = jax.device_get(state.params)
    state = parallel.replicate(state, mesh)
    step = make_train_step(method, optimizer, optax.constant_schedule(1.0), mesh)
    state, metrics = step(state, parallel.shard_batch(data, mesh), jax.random.key(1))
    grads = jax.tree.map(lambda b, a: b - a, before, jax.device_get(state.params))
    return jax.device_get(metrics), grads, jax.device_get(state.batch_stats)


@pytest.fixture(scope="module")
def global_bn_runs():
    config, data = tiny_config("global"), batch()
    return one_step(config, 1, data), one_step(config, 8, data)


def test_loss_equal_one_vs_eight_devices(global_bn_runs):
    (m1, _, _), (m8, _, _) = global_bn_runs
    for key in ("loss", "contrastive_loss", "probe_loss", "probe_top1", "contrastive_acc", "contrastive_entropy"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_gradients_equal_one_vs_eight_devices(global_bn_runs):
    (_, g1, _), (_, g8, _) = global_bn_runs
    flat1, flat8 = jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)
    scale = max(float(np.abs(g).max()) for _, g in flat1)
    assert scale > 1e-4
    for (path, a), b in zip(flat1, flat8):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_global_bn_running_stats_equal(global_bn_runs):
    (_, _, s1), (_, _, s8) = global_bn_runs
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_probe_gets_no_gradient_into_encoder_from_probe_loss(global_bn_runs):
    (m1, g1, _), _ = global_bn_runs
    assert "probe" in g1 and float(np.abs(g1["probe"]["Dense_0"]["kernel"]).max()) > 0
    assert m1["probe_loss"] == pytest.approx(np.log(10), rel=0.05)   # small-init probe: near-uniform logits


def test_per_replica_bn_differs(global_bn_runs):
    (m1, _, _), _ = global_bn_runs
    m8, _, _ = one_step(tiny_config("replica"), 8, batch())
    # Per-replica statistics over 4 views instead of 32 change the embeddings and so the loss.
    assert abs(float(m8["contrastive_loss"]) - float(m1["contrastive_loss"])) > 1e-4
