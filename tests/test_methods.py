"""Methods beyond SimCLR: config validation, EMA schedule and update, the MoCo queue, shuffle BN,
SimSiam's undecayed predictor LR, and BYOL's full step on 1 device == 8 devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import optim, parallel
from sslx.config import base_config
from sslx.methods import build_method
from sslx.methods.moco import shuffled_apply
from sslx.methods.target import cosine_momentum
from sslx.train import create_train_state, make_train_step

GLOBAL_BATCH = 16
SIZE = 4
TOTAL_STEPS = 10
# What these tests check does not depend on how well XLA optimises the step; compiling is their main cost.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def tiny_config(method, **overrides):
    c = base_config()
    c.method = method
    c.batch_size = GLOBAL_BATCH
    c.model.width = 0.0625   # 4 to 32 channels: the step's structure at a fraction of the compile time
    c.head.hidden_dim = 16
    c.head.out_dim = 8
    if method in ("byol", "mocov3", "simsiam"):
        c.predictor.num_layers = 2
        c.predictor.hidden_dim = 16
    if method == "mocov2":
        c.moco.queue_size = 4 * GLOBAL_BATCH
        c.head.use_bn = False
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"views": tuple(rng.uniform(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)),
            "label": rng.integers(0, 10, size=(GLOBAL_BATCH,)).astype(np.int32)}


def initial_state(method, optimizer):
    # Jitted: an eager init dispatches (and compiles) every layer's ops one by one, which costs minutes.
    return jax.jit(create_train_state, static_argnums=(0, 1), compiler_options=FAST_COMPILE)(
        method, optimizer, jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)))


def run_steps(method, num_devices, batches):
    """Plain SGD with learning rate 1 (parameter change = minus the gradient); returns every state."""
    optimizer = optax.sgd(1.0)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    state = parallel.replicate(initial_state(method, optimizer), mesh)
    step = make_train_step(method, optimizer, optax.constant_schedule(1.0), mesh).lower(
        state, parallel.shard_batch(batches[0], mesh), jax.random.key(1)).compile(FAST_COMPILE)
    # np.array copies: on CPU device_get may alias a buffer that the next (donating) step overwrites.
    host = lambda tree: jax.tree.map(np.array, jax.device_get(tree))  # noqa: E731
    states, metrics = [host(state)], []
    for data in batches:
        state, m = step(state, parallel.shard_batch(data, mesh), jax.random.key(1))
        states.append(host(state))
        metrics.append(jax.device_get(m))
    return method, states, metrics, state


@pytest.mark.parametrize("method,overrides,key", [
    ("mocov2", {"moco.queue_size": 40}, "config.moco.queue_size"),
    ("mocov2", {"moco.shuffle_bn": True}, "config.moco.shuffle_bn"),
    ("simclr", {"predictor.num_layers": 2}, "config.predictor.num_layers"),
    ("byol", {"predictor.num_layers": 0}, "config.predictor.num_layers"),
])
def test_option_mismatch_names_the_key(method, overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_method(tiny_config(method, **overrides), num_classes=10, total_steps=TOTAL_STEPS)


def test_cosine_momentum_values():
    assert float(cosine_momentum(0, 1000, 0.996)) == pytest.approx(0.996)
    assert float(cosine_momentum(500, 1000, 0.996)) == pytest.approx(0.998)
    assert float(cosine_momentum(1000, 1000, 0.996)) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def byol_runs():
    # One method object: the jitted init compiles once for both runs.
    method, data = build_method(tiny_config("byol"), num_classes=10, total_steps=TOTAL_STEPS), [batch()]
    return run_steps(method, 1, data), run_steps(method, 8, data)


def test_byol_step_one_vs_eight_devices(byol_runs):
    (_, s1, m1, _), (_, s8, m8, _) = byol_runs
    for key in ("loss", "byol_loss", "tau"):
        np.testing.assert_allclose(m8[0][key], m1[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
    g1 = jax.tree.map(lambda b, a: b - a, s1[0].params, s1[1].params)
    g8 = jax.tree.map(lambda b, a: b - a, s8[0].params, s8[1].params)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
    assert scale > 1e-4
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))
    # The online network's BN statistics in batch_stats, the target's in extra: both the same on 1 and 8.
    assert set(s8[1].batch_stats) == {"encoder", "head", "predictor"}
    assert set(s8[1].extra["target_batch_stats"]) == {"encoder", "head"}
    for tree in (lambda s: s.batch_stats, lambda s: s.extra["target_batch_stats"]):
        for a, b in zip(jax.tree.leaves(tree(s1[1])), jax.tree.leaves(tree(s8[1]))):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s8[0].extra["target_batch_stats"]),
                                                              jax.tree.leaves(s8[1].extra["target_batch_stats"])))
    assert moved > 0   # the target's running statistics follow its own forward passes


def test_byol_target_moves_by_the_ema_rule(byol_runs):
    _, (method, states, metrics, _) = byol_runs
    tau = np.float32(metrics[0]["tau"])
    assert float(tau) == pytest.approx(float(cosine_momentum(0, TOTAL_STEPS, 0.996)))
    assert float(tau) == pytest.approx(0.996)
    before, after = states
    assert set(after.extra["target_params"]) == {"encoder", "head"}
    # In float32 as the step computes it: 1 - tau carries tau's rounding (~1e-5 relative).
    expected = jax.tree.map(lambda t, o: tau * t + (np.float32(1) - tau) * o, before.extra["target_params"],
                            {k: after.params[k] for k in ("encoder", "head")})
    moved = 0.0
    for a, b, t0 in zip(jax.tree.leaves(expected), jax.tree.leaves(after.extra["target_params"]),
                        jax.tree.leaves(before.extra["target_params"])):
        # Float32 rounding: 1 ulp of tau is ~1.5e-5 of 1 - tau, so of the movement, plus an ulp of the value.
        tolerance = 1e-4 * float(np.abs(a - t0).max()) + 2 * float(np.spacing(np.abs(t0).max()))
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance)
        moved = max(moved, float(np.abs(b - t0).max()))
    assert moved > 0


@pytest.fixture(scope="module")
def moco_run():
    config = tiny_config("mocov2")
    config.moco.queue_size = 2 * GLOBAL_BATCH   # three steps wrap around once
    method = build_method(config, num_classes=10, total_steps=TOTAL_STEPS)
    return run_steps(method, 8, [batch(seed) for seed in range(3)])


def key_encoder(method):
    return jax.jit(functools.partial(method.target_network(None).apply, train=True, mutable=["batch_stats"]),
                   compiler_options=FAST_COMPILE)


def test_queue_holds_the_last_keys_in_order(moco_run):
    method, states, _, final = moco_run
    n = GLOBAL_BATCH
    for k in range(3):
        before, after = states[k], states[k + 1]
        # The keys of step k: the key encoder (train mode, global BN) on view 2 of the whole batch.
        out, stats = key_encoder(method)(
            {"params": before.extra["target_params"], "batch_stats": before.extra["target_batch_stats"]},
            batch(k)["views"][1])
        keys = out["z"] / np.linalg.norm(out["z"], axis=-1, keepdims=True)
        # Global BN: the key encoder's running statistics are those of the whole batch.
        for a, b in zip(jax.tree.leaves(stats["batch_stats"]), jax.tree.leaves(after.extra["target_batch_stats"])):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        rows = slice((k % 2) * n, (k % 2 + 1) * n)
        np.testing.assert_allclose(after.extra["queue"][rows], keys, rtol=1e-4, atol=1e-5)
        # The other rows are untouched: the newest keys overwrite exactly the oldest batch.
        others = slice((1 - k % 2) * n, (2 - k % 2) * n)
        np.testing.assert_array_equal(after.extra["queue"][others], before.extra["queue"][others])
    for leaf in jax.tree.leaves(final.extra):   # queue and target: the same on every replica
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 8 and all(np.array_equal(s, shards[0]) for s in shards)


def shuffle(fn, x, seed):
    mesh = parallel.make_mesh()
    wrapped = lambda x: shuffled_apply(lambda y: (fn(y), None), x, jax.random.key(seed), "batch")[0]  # noqa: E731
    return jax.jit(jax.shard_map(wrapped, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")))(
        jax.device_put(x, NamedSharding(mesh, P("batch"))))


def test_shuffle_bn_unpermutes_outputs():
    x = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
    np.testing.assert_array_equal(shuffle(lambda y: 2 * y, x, seed=0), 2 * x)


def test_shuffle_bn_changes_only_which_examples_share_statistics():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    centred = np.asarray(shuffle(lambda y: y - y.mean(0), x, seed=5))
    # Reference: each replica centres the examples at its slice of the permutation.
    perm = np.asarray(jax.random.permutation(jax.random.key(5), 32))
    expected = np.empty_like(x)
    for r in range(8):
        rows = perm[4 * r:4 * (r + 1)]
        expected[rows] = x[rows] - x[rows].mean(0)
    np.testing.assert_allclose(centred, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(centred, x - x.reshape(8, 4, 3).mean(1, keepdims=True).repeat(4, 1).reshape(32, 3))


def test_constant_lr_modules_hold_the_peak():
    c = base_config().optim
    c.name, c.momentum, c.weight_decay = "sgd", 0.0, 0.0
    c.constant_lr_modules = ("predictor",)
    schedule = optim.warmup_cosine(0.4, warmup_steps=2, total_steps=10)
    opt = optim.make_optimizer(c, schedule)
    params = {"encoder": {"kernel": jnp.ones((2, 2))}, "predictor": {"kernel": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = opt.init(params)
    for step in range(8):
        updates, state = opt.update(grads, state, params)
        peak_so_far = max(float(schedule(s)) for s in range(step + 1))
        np.testing.assert_allclose(updates["encoder"]["kernel"], -float(schedule(step)), rtol=1e-6)
        np.testing.assert_allclose(updates["predictor"]["kernel"], -peak_so_far, rtol=1e-6)
    assert float(schedule(7)) < 0.3   # the encoder's rate did decay


@pytest.mark.parametrize("method,overrides", [
    ("mocov2", {"moco.shuffle_bn": True, "model.bn": "replica"}), ("mocov3", {}), ("simsiam", {}),
    ("barlow_twins", {}), ("vicreg", {}), ("supcon", {}), ("simclr", {})])
def test_other_methods_trace_a_step(method, overrides):
    """The whole step traces (shapes, collectives, state structure) without the cost of compiling."""
    config = tiny_config(method, **overrides)
    method = build_method(config, num_classes=10, total_steps=TOTAL_STEPS)
    optimizer = optax.sgd(1.0)
    state = jax.eval_shape(functools.partial(create_train_state, method, optimizer), jax.random.key(0),
                           jnp.zeros((2, SIZE, SIZE, 3)))
    step = make_train_step(method, optimizer, optax.constant_schedule(1.0), parallel.make_mesh())
    new_state, metrics = jax.eval_shape(step, state, batch(), jax.random.key(1))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].shape == ()
