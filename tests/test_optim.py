"""LARS masks and learning-rate schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import optim
from sslx.config import base_config


def lars_config(weight_decay=0.1):
    c = base_config().optim
    c.weight_decay = weight_decay
    return c


def toy_params():
    return {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)},
            "bn": {"scale": jnp.full((4,), 3.0), "bias": jnp.full((4,), 0.5)},
            "dense": {"kernel": jnp.full((4, 2), 1.0), "bias": jnp.full((2,), 0.25)}}


def test_decay_mask_excludes_bn_and_bias():
    mask = optim.decay_mask(toy_params())
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                    "dense": {"kernel": True, "bias": False}}


def test_lars_skips_decay_and_adaptation_for_bn_and_bias():
    lr, wd, eta = 0.1, 0.1, 1e-3
    opt = optim.make_optimizer(lars_config(wd), lambda _: lr)
    params = toy_params()
    grads = jax_tree_full_like(params, 0.01)
    updates, _ = opt.update(grads, opt.init(params), params)
    # BN and bias leaves: plain SGD step (no decay, no trust ratio).
    np.testing.assert_allclose(updates["bn"]["scale"], -lr * 0.01, rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], -lr * 0.01, rtol=1e-6)
    # Kernels: decayed gradient scaled by eta * ||w|| / ||g + wd w||.
    w = params["conv"]["kernel"]
    g = grads["conv"]["kernel"] + wd * w
    trust = eta * np.linalg.norm(w) / np.linalg.norm(g)
    np.testing.assert_allclose(updates["conv"]["kernel"], -lr * trust * g, rtol=1e-5)


def jax_tree_full_like(tree, value):
    return jax.tree.map(lambda x: jnp.full_like(x, value), tree)


def test_peak_learning_rate_scalings():
    assert optim.peak_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert optim.peak_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError, match="config.optim.lr_scaling"):
        optim.peak_learning_rate(0.3, 256, "cubic")


def test_warmup_cosine_values():
    schedule = optim.warmup_cosine(4.8, warmup_steps=10, total_steps=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(2.4)
    assert float(schedule(10)) == pytest.approx(4.8)
    assert float(schedule(55)) == pytest.approx(2.4, rel=1e-5)   # half-way through the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)


def test_unknown_optimizer_names_the_key():
    c = lars_config()
    c.name = "adagrad"
    with pytest.raises(ValueError, match="config.optim.name"):
        optim.make_optimizer(c, optax.constant_schedule(0.1))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_other_optimizers_mask_decay(name):
    c = lars_config(weight_decay=0.5)
    c.name = name
    opt = optim.make_optimizer(c, lambda _: 0.1)
    params = toy_params()
    zero = jax_tree_full_like(params, 0.0)
    updates, _ = opt.update(zero, opt.init(params), params)
    # With zero gradients only weight decay moves parameters, and only the kernels.
    assert float(jnp.abs(updates["bn"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0.0
