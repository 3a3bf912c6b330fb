"""GradCache micro-batching: the full batch's loss and gradients with one micro-batch's activations.

BatchNorm normalises each micro-batch with its own statistics (over all replicas with global BN), so:
micro-batches with identical statistics give exactly the full-batch step, and in general the step
equals a full-batch step whose BN runs per micro-batch group. A two-layer network with global BN
and NT-Xent keeps the compile short; the step, the collectives and the hooks are the real ones.
Also: config.model.remat wraps the ResNet blocks and leaves the parameters as they are.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import parallel
from sslx.config import base_config
from sslx.losses import nt_xent
from sslx.methods import build_method
from sslx.methods.base import Method, views
from sslx.models import build_encoder
from sslx.train import create_train_state, make_train_step

SIZE = 4
DEVICES = 8
PER_DEVICE = 4
MICRO = 2


class TinyNet(nn.Module):
    bn_axis_name: str | None

    @nn.compact
    def __call__(self, images, train):
        h = nn.Dense(32)(images.reshape(images.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.bn_axis_name)(h)
        return {"z": nn.Dense(16)(nn.relu(h))}


class TinySimCLR(Method):
    """SimCLR's loss (both views in one pass, NT-Xent over the global batch) split for GradCache."""

    def network(self, axis_name):
        return TinyNet(axis_name)

    def embed(self, params, batch_stats, batch):
        view1, view2 = views(batch)
        n = view1.shape[0]
        z = self.forward(params, batch_stats, jnp.concatenate([view1, view2]))
        return {"z": jnp.stack([z[0]["z"][:n], z[0]["z"][n:]], axis=1)}, z[1]

    def loss_from_embeddings(self, outputs, batch):
        z = outputs["z"]
        out = nt_xent(z[:, 0], z[:, 1], temperature=0.2, axis_name=parallel.BATCH_AXIS)
        return out.loss, {"contrastive_acc": out.accuracy}

    def loss(self, params, batch_stats, extra, batch, rng, step):
        outputs, stats = self.embed(params, batch_stats, batch)
        loss, metrics = self.loss_from_embeddings(outputs, batch)
        return loss, (stats, metrics, {})


class GroupedBNSimCLR(TinySimCLR):
    """The reference: one differentiated full-batch loss whose BN runs per micro-batch group."""

    def loss(self, params, batch_stats, extra, batch, rng, step):
        groups = [jax.tree.map(lambda x: x[i:i + MICRO], batch) for i in range(0, PER_DEVICE, MICRO)]
        outputs, stats = zip(*[self.embed(params, batch_stats, group) for group in groups])
        outputs = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs)
        stats = jax.tree.map(lambda *xs: sum(xs) / len(xs), *stats)
        loss, metrics = self.loss_from_embeddings(outputs, batch)
        return loss, (stats, metrics, {})


def make_batch(examples, seed):
    rng = np.random.default_rng(seed)
    return {"views": tuple(rng.uniform(size=(examples, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))}


def stepper(method_class, micro_batch_size, devices=DEVICES, learning_rate=1.0):
    """`run(state, batch) -> (state, metrics)`: one SGD step on the devices, and the initial host state."""
    config = base_config()
    config.micro_batch_size = micro_batch_size
    method = method_class(config, num_classes=0, total_steps=10)
    mesh = parallel.make_mesh(jax.devices()[:devices])
    optimizer = optax.sgd(learning_rate)
    step = make_train_step(method, optimizer, optax.constant_schedule(learning_rate), mesh)
    # On the host: the step donates its state, which must not be these buffers.
    init = jax.device_get(jax.jit(create_train_state, static_argnums=(0, 1))(
        method, optimizer, jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3))))
    return lambda state, batch: step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh),
                                     jax.random.key(1)), init


def one_step(run_and_init, batch):
    """(loss, gradients, new BN statistics) of one SGD(1) step: the parameter change is -gradient."""
    run, init = run_and_init
    state, metrics = run(init, batch)
    grads = jax.tree.map(lambda b, a: b - a, init.params, jax.device_get(state.params))
    return float(metrics["loss"]), grads, jax.device_get(state.batch_stats)


@pytest.fixture(scope="module")
def grad_cache_step():
    return stepper(TinySimCLR, MICRO)


def assert_steps_equal(expected, actual):
    (loss, grads, stats), (other_loss, other_grads, other_stats) = expected, actual
    np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    assert scale > 1e-4
    for (path, g), h in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(other_grads)):
        # Biases ahead of a BN have a zero gradient in exact arithmetic: in float32 it is summation noise of about
        # 1e-6 of the largest gradient (seen: 3.2e-7 against a largest gradient of 0.27).
        np.testing.assert_allclose(h, g, rtol=1e-4, atol=5e-6 * scale, err_msg=jax.tree_util.keystr(path))
    for s, t in zip(jax.tree.leaves(stats), jax.tree.leaves(other_stats)):
        np.testing.assert_allclose(t, s, rtol=1e-5, atol=1e-7)


def test_identical_micro_batch_statistics_give_the_full_batch_step(grad_cache_step):
    # Each device holds one micro-batch twice: every micro-batch group has the full batch's BN statistics.
    half = make_batch(DEVICES * MICRO, seed=0)
    batch = jax.tree.map(lambda x: np.concatenate([np.concatenate([x[d * MICRO:(d + 1) * MICRO]] * 2)
                                                   for d in range(DEVICES)]), half)
    assert_steps_equal(one_step(stepper(TinySimCLR, 0), batch), one_step(grad_cache_step, batch))


def test_equals_full_batch_with_bn_per_micro_batch_group(grad_cache_step):
    batch = make_batch(DEVICES * PER_DEVICE, seed=1)
    assert_steps_equal(one_step(stepper(GroupedBNSimCLR, 0), batch), one_step(grad_cache_step, batch))


def test_one_device_with_micro_batches_equals_eight_devices(grad_cache_step):
    # One device with micro-batches of 8 = BN over 8 examples, as 8 devices with micro-batches of 1.
    batch = make_batch(DEVICES * PER_DEVICE, seed=2)
    order = np.arange(DEVICES * PER_DEVICE).reshape(DEVICES, PER_DEVICE).T.reshape(-1)
    grouped = jax.tree.map(lambda x: x[order], batch)   # micro-batch j on one device = row j of every device
    eight = one_step(stepper(TinySimCLR, 1, devices=8), batch)
    one = one_step(stepper(TinySimCLR, DEVICES, devices=1), grouped)
    assert_steps_equal(eight, one)


def test_micro_batch_must_divide_the_per_device_batch():
    run, init = stepper(TinySimCLR, 3)
    with pytest.raises(ValueError, match=r"config.micro_batch_size=3 .* per-device batch of 4"):
        run(init, make_batch(DEVICES * PER_DEVICE, seed=2))


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_method_without_the_split_names_the_key(method):
    config = base_config()
    config.method, config.micro_batch_size = method, 4
    if method == "byol":
        config.predictor.num_layers = 2
    with pytest.raises(ValueError, match=r"config\.micro_batch_size > 0 needs a method with embed"):
        build_method(config, num_classes=10, total_steps=10)


def test_remat_wraps_resnet_blocks_and_keeps_parameters():
    config = base_config()
    config.model.width = 0.125
    plain = build_encoder(config.model, None)
    config.model.remat = True
    remat = build_encoder(config.model, None)
    images = jnp.zeros((2, 8, 8, 3))
    shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), images, train=False))
    assert jax.eval_shape(lambda: remat.init(jax.random.key(0), images, train=False)) == shapes
    variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    forward = jax.make_jaxpr(lambda v: remat.apply(v, images, train=True, mutable=["batch_stats"]))(variables)
    assert str(forward).count("remat") == 8   # resnet18: 2 + 2 + 2 + 2 blocks
