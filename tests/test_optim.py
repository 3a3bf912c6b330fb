"""LARS (masks, momentum, the probe's exclusion from adaptation) and learning-rate schedules."""
import functools

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


def reference_lars_step(w, g, v, *, lr, wd, eta, momentum, nesterov, decay, adapt):
    """One step of SimCLR's LARS (lars_optimizer.py, classic momentum) for one variable -> (w, v)."""
    if decay:
        g = g + wd * w
    trust = 1.0
    if adapt:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    v = momentum * v + lr * trust * g
    update = momentum * v + lr * trust * g if nesterov else v
    return w - update, v


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_reference_over_steps(nesterov):
    lr, wd, eta, momentum, steps = 0.5, 0.1, 1e-3, 0.9, 4
    c = lars_config(wd)
    c.nesterov, c.lars_eta, c.momentum = nesterov, eta, momentum
    opt = optim.make_optimizer(c, lambda _: lr)
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))}, "bn": {"scale": rng.normal(size=4)},
              "probe": {"Dense_0": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)}}}
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params) for _ in range(steps)]
    state, current = opt.init(params), params
    for g in grads:
        updates, state = opt.update(g, state, current)
        current = optax.apply_updates(current, updates)
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        ref, v = np.asarray(w, np.float64), 0.0
        for g in grads:
            grad = np.asarray(functools.reduce(lambda t, k: t[k.key], path, g), np.float64)
            ref, v = reference_lars_step(ref, grad, v, lr=lr, wd=wd, eta=eta, momentum=momentum, nesterov=nesterov,
                                         decay=w.ndim > 1, adapt=w.ndim > 1 and "probe" not in name)
        got = functools.reduce(lambda t, k: t[k.key], path, current)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_nesterov_changes_lars():
    """The reference test above would catch a dropped flag only if the two rules differ this much."""
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)}}
    moved = {}
    for nesterov in (False, True):
        c = lars_config()
        c.nesterov = nesterov
        opt = optim.make_optimizer(c, lambda _: 0.5)
        state, current = opt.init(params), params
        for _ in range(4):
            updates, state = opt.update(jax_tree_full_like(params, 0.01), state, current)
            current = optax.apply_updates(current, updates)
        moved[nesterov] = float(jnp.linalg.norm(current["conv"]["kernel"] - params["conv"]["kernel"]))
    assert moved[True] > 1.2 * moved[False]


def test_probe_is_decayed_but_not_adapted():
    """SimCLR: 'head_supervised' is outside LARS's decay and trust ratio, its kernel decayed through an L2 loss."""
    params = {"encoder": {"kernel": jnp.full((4, 3), 2.0)},
              "probe": {"Dense_0": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}}}
    assert optim.trust_ratio_mask(params) == {"encoder": {"kernel": True},
                                              "probe": {"Dense_0": {"kernel": False, "bias": False}}}
    lr, wd = 0.1, 0.1
    opt = optim.make_optimizer(lars_config(wd), lambda _: lr)
    updates, _ = opt.update(jax_tree_full_like(params, 0.01), opt.init(params), params)
    np.testing.assert_allclose(updates["probe"]["Dense_0"]["kernel"], -lr * (0.01 + wd * 2.0), rtol=1e-6)
    np.testing.assert_allclose(updates["probe"]["Dense_0"]["bias"], -lr * 0.01, rtol=1e-6)
    # The encoder's kernel with the same weights and gradients takes the trust-ratio-scaled step.
    assert float(jnp.abs(updates["encoder"]["kernel"]).max()) < 1e-2 * float(
        jnp.abs(updates["probe"]["Dense_0"]["kernel"]).max())


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


def test_schedule_starts_and_ends_at_the_unscaled_warmup_start_and_end_rates():
    # SwAV's 800-epoch ImageNet run: warm-up from 0.3 to 4.8 (0.3 x 4096 / 256), cosine down to 0.0048.
    c = lars_config()
    c.base_lr, c.warmup_steps, c.warmup_start_lr, c.end_lr = 0.3, 10, 0.3, 0.0048
    schedule = optim.schedule_from_config(c, batch_size=4096, total_steps=110, per_epoch=1)
    assert float(schedule(0)) == pytest.approx(0.3)
    assert float(schedule(5)) == pytest.approx(2.55)
    assert float(schedule(10)) == pytest.approx(4.8)
    assert float(schedule(60)) == pytest.approx((4.8 + 0.0048) / 2, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0048, rel=1e-5)


def test_weight_decay_follows_a_cosine_to_weight_decay_end_over_the_run():
    # DINO: 0.04 -> 0.4. With zero gradients and plain SGD an update is -lr x wd(step) x w on kernels only.
    c = lars_config(weight_decay=0.04)
    c.name, c.momentum, c.weight_decay_end = "sgd", 0.0, 0.4
    opt = optim.make_optimizer(c, lambda _: 1.0, total_steps=10)
    params = toy_params()
    zero, state, decays = jax_tree_full_like(params, 0.0), opt.init(params), []
    for _ in range(11):
        updates, state = opt.update(zero, state, params)
        decays.append(float(-updates["dense"]["kernel"][0, 0]))
        assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(decays[0], 0.04, rtol=1e-6)
    np.testing.assert_allclose(decays[5], 0.22, rtol=1e-6)
    np.testing.assert_allclose(decays[10], 0.4, rtol=1e-6)
    with pytest.raises(ValueError, match="weight_decay_end >= 0 needs the run's length"):
        optim.make_optimizer(c, lambda _: 1.0)


def test_each_gradient_tensor_is_clipped_to_its_own_norm():
    c = lars_config(weight_decay=0.0)
    c.name, c.momentum, c.grad_clip_per_tensor = "sgd", 0.0, 3.0
    opt = optim.make_optimizer(c, lambda _: 1.0)
    params = {"big": jnp.zeros((4,)), "small": jnp.zeros((4,))}
    grads = {"big": jnp.full((4,), 5.0), "small": jnp.full((4,), 0.5)}   # norms 10 and 1
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["big"], -1.5, rtol=1e-5)          # scaled to norm 3 on its own
    np.testing.assert_allclose(updates["small"], -0.5, rtol=1e-6)        # under 3: unchanged


def test_swav_lars_decays_and_adapts_every_parameter_when_asked():
    c = lars_config(weight_decay=0.5)
    c.exclude_norm_and_bias = False
    opt = optim.make_optimizer(c, lambda _: 0.1)
    params = toy_params()
    updates, _ = opt.update(jax_tree_full_like(params, 0.0), opt.init(params), params)
    assert float(jnp.abs(updates["dense"]["bias"]).max()) > 0.0
    assert float(jnp.abs(updates["bn"]["scale"]).max()) > 0.0
