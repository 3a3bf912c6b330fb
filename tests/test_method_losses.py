"""The losses of BYOL, SimSiam, MoCo v2/v3, Barlow Twins, VICReg and SupCon against direct references
(NT-Xent's is in test_losses.py),
1 device == 8 devices for each (as the train step takes the pmean of per-replica losses), and their
8-device gradients against finite differences of the references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import losses, parallel
from test_losses import reference_nt_xent


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def views(n, d, seed):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = (z1 + 0.7 * rng.normal(size=(n, d))).astype(np.float32)
    return z1, z2


def log_softmax_at(logits, index):
    return logits[index] - np.log(np.sum(np.exp(logits)))


SHAPES = [(4, 3), (16, 8), (8, 32)]


@pytest.mark.parametrize("n,d", SHAPES)
def test_byol_and_simsiam_match_reference(n, d):
    p, z = views(n, d, seed=n * d)
    cos = [unit(p[i]) @ unit(z[i]) for i in range(n)]
    np.testing.assert_allclose(losses.byol_regression(p, z), np.mean([2 - 2 * c for c in cos]), rtol=1e-5)
    np.testing.assert_allclose(losses.simsiam_negative_cosine(p, z), -np.mean(cos), rtol=1e-5, atol=1e-6)
    # BYOL eq. 2 is the squared distance of the unit vectors.
    np.testing.assert_allclose(losses.byol_regression(p, z), np.mean(np.sum((unit(p) - unit(z)) ** 2, -1)),
                               rtol=1e-5)
    grad_z = jax.grad(losses.byol_regression, argnums=1)(p, z)
    assert float(jnp.abs(grad_z).max()) == 0.0   # stop-gradient on the target


def reference_byol(p, z):
    return np.mean([2 - 2 * unit(p[i]) @ unit(z[i]) for i in range(len(p))])


def reference_simsiam(p, z):
    return -np.mean([unit(p[i]) @ unit(z[i]) for i in range(len(p))])


def reference_info_nce_queue(q, key, queue, t):
    total = 0.0
    for i in range(len(q)):
        logits = np.array([unit(q[i]) @ unit(key[i])] + [unit(q[i]) @ queue[j] for j in range(len(queue))]) / t
        total -= log_softmax_at(logits, 0)
    return total / len(q)


@pytest.mark.parametrize("n,d,k,t", [(4, 3, 8, 0.2), (8, 16, 32, 0.07), (2, 8, 4, 1.0)])
def test_info_nce_queue_matches_reference(n, d, k, t):
    q, key = views(n, d, seed=k)
    queue = unit(np.random.default_rng(k).normal(size=(k, d))).astype(np.float32)
    out = losses.info_nce_queue(q, key, queue, temperature=t)
    np.testing.assert_allclose(out.loss, reference_info_nce_queue(q, key, queue, t), rtol=1e-5)


def reference_moco_v3(q, k, t):
    n = len(q)
    total = 0.0
    for i in range(n):
        logits = np.array([unit(q[i]) @ unit(k[j]) for j in range(n)]) / t
        total -= log_softmax_at(logits, i)
    return 2 * t * total / n


def reference_barlow(z1, z2, lam, eps=1e-5):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape
    zn1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)
    zn2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(zn1[b, i] * zn2[b, j] for b in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


def reference_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape
    invariance = np.mean((z1 - z2) ** 2)

    def var_cov(z):
        std = np.sqrt(np.var(z, axis=0, ddof=1) + 1e-4)
        cov = np.cov(z, rowvar=False)
        off = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
        return np.mean(np.maximum(0, 1 - std)), off / d

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return lam * invariance + mu * (v1 + v2) / 2 + nu * (c1 + c2)


def reference_supcon(z1, z2, labels, t):
    z = unit(np.concatenate([z1, z2]))
    lab = np.concatenate([labels, labels])
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        logits = np.array([z[i] @ z[a] / t for a in others])
        positives = [others.index(a) for a in others if lab[a] == lab[i]]
        total -= np.mean([log_softmax_at(logits, p) for p in positives])
    return total / len(z)


@pytest.mark.parametrize("n,d", SHAPES)
def test_moco_v3_matches_reference(n, d):
    q, k = views(n, d, seed=d)
    out = losses.moco_v3_contrastive(q, k, temperature=0.2)
    np.testing.assert_allclose(out.loss, reference_moco_v3(q, k, 0.2), rtol=1e-5)


@pytest.mark.parametrize("n,d", SHAPES)
def test_barlow_twins_matches_reference(n, d):
    z1, z2 = views(n, d, seed=n + d)
    np.testing.assert_allclose(losses.barlow_twins(z1, z2, lambda_offdiag=5e-3), reference_barlow(z1, z2, 5e-3),
                               rtol=1e-4)


@pytest.mark.parametrize("n,d", SHAPES)
def test_vicreg_matches_reference(n, d):
    z1, z2 = views(n, d, seed=n + 2 * d)
    z1 *= 0.3   # some dimensions below unit std, so the hinge is active
    np.testing.assert_allclose(losses.vicreg(z1, z2).loss, reference_vicreg(z1, z2), rtol=1e-4)


@pytest.mark.parametrize("n,d,classes", [(4, 3, 2), (16, 8, 3), (8, 32, 8)])
def test_supcon_matches_reference(n, d, classes):
    z1, z2 = views(n, d, seed=classes)
    labels = np.random.default_rng(classes).integers(0, classes, size=n).astype(np.int32)
    out = losses.supcon(z1, z2, labels, temperature=0.1)
    np.testing.assert_allclose(out.loss, reference_supcon(z1, z2, labels, 0.1), rtol=1e-4)


def test_supcon_with_distinct_labels_is_nt_xent():
    z1, z2 = views(8, 16, seed=3)
    out = losses.supcon(z1, z2, np.arange(8), temperature=0.5)
    np.testing.assert_allclose(out.loss, losses.nt_xent(z1, z2, temperature=0.5).loss, rtol=1e-6)


def queue(d):
    """MoCo v2's negatives, 12 unit keys of dimension d: the same on every replica (as after_update keeps it)."""
    return unit(np.random.default_rng(5).normal(size=(12, d))).astype(np.float32)


# name -> f(z1, z2, labels, axis_name) -> scalar; every loss, wired for the 1-vs-8 check. The per-example
# ones (BYOL, SimSiam, MoCo v2's queue) take no axis: the step's pmean of equal shares is their global mean.
BATCH_LOSSES = {
    "byol": lambda a, b, y, axis: losses.byol_regression(a, b),
    "simsiam": lambda a, b, y, axis: losses.simsiam_negative_cosine(a, b),
    "mocov2_queue": lambda a, b, y, axis: losses.info_nce_queue(a, b, queue(a.shape[-1]), temperature=0.2).loss,
    "nt_xent": lambda a, b, y, axis: losses.nt_xent(a, b, temperature=0.2, axis_name=axis).loss,
    "moco_v3": lambda a, b, y, axis: losses.moco_v3_contrastive(a, b, temperature=0.2, axis_name=axis).loss,
    "barlow_twins": lambda a, b, y, axis: losses.barlow_twins(a, b, lambda_offdiag=5e-3, axis_name=axis),
    "vicreg": lambda a, b, y, axis: losses.vicreg(a, b, axis_name=axis).loss,
    "supcon": lambda a, b, y, axis: losses.supcon(a, b, y, temperature=0.1, axis_name=axis).loss,
}


# Compiling, not running, is these checks' cost; an eager 1-device reference would compile op by op.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@functools.lru_cache(maxsize=None)
def sharded_value_and_grad(name):
    loss = BATCH_LOSSES[name]

    def per_replica(a, b, y):
        return jax.value_and_grad(
            lambda a, b: jax.lax.pmean(loss(a, b, y, parallel.BATCH_AXIS), parallel.BATCH_AXIS),
            argnums=(0, 1))(a, b)

    return fast_jit(jax.shard_map(per_replica, mesh=parallel.make_mesh(), in_specs=(P("batch"),) * 3,
                                  out_specs=(P(), (P("batch"), P("batch")))))


@pytest.mark.parametrize("name", sorted(BATCH_LOSSES))
@pytest.mark.parametrize("n_per_device,d", [(1, 4), (4, 16)])
def test_one_device_equals_eight(name, n_per_device, d):
    z1, z2 = views(8 * n_per_device, d, seed=d)
    z1 *= 0.5   # VICReg's variance hinge active
    labels = np.random.default_rng(d).integers(0, 3, size=8 * n_per_device).astype(np.int32)
    one_loss, one_grads = fast_jit(jax.value_and_grad(lambda a, b, y: BATCH_LOSSES[name](a, b, y, None),
                                                      argnums=(0, 1)))(z1, z2, labels)
    sharding = NamedSharding(parallel.make_mesh(), P("batch"))
    eight_loss, eight_grads = sharded_value_and_grad(name)(
        *(jax.device_put(x, sharding) for x in (z1, z2, labels)))
    np.testing.assert_allclose(eight_loss, one_loss, rtol=1e-5, atol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in one_grads if float(jnp.abs(g).max()) > 0)
    assert scale > 1e-4
    for one, eight in zip(one_grads, eight_grads):
        np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-5 * scale)


# name -> (reference(z1, z2, labels) in float64, whether z2 gets a gradient): z2 is a stop-gradient
# target (BYOL, SimSiam) or momentum keys (MoCo) for the first four.
REFERENCES = {
    "byol": (lambda a, b, y: reference_byol(a, b), False),
    "simsiam": (lambda a, b, y: reference_simsiam(a, b), False),
    "mocov2_queue": (lambda a, b, y: reference_info_nce_queue(a, b, queue(a.shape[-1]), 0.2), False),
    "moco_v3": (lambda a, b, y: reference_moco_v3(a, b, 0.2), False),
    "nt_xent": (lambda a, b, y: reference_nt_xent(a, b, 0.2), True),
    "barlow_twins": (lambda a, b, y: reference_barlow(a, b, 5e-3), True),
    "vicreg": (lambda a, b, y: reference_vicreg(a, b), True),
    "supcon": (lambda a, b, y: reference_supcon(a, b, y, 0.1), True),
}


def finite_difference_grad(f, x, eps=1e-6):
    """Central differences of a float64 reference: the gradient the loss's autodiff must reproduce."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


def test_every_loss_has_a_reference():
    assert set(REFERENCES) == set(BATCH_LOSSES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_eight_device_gradients_match_reference(name):
    # The (1, 4) shape of the 1-vs-8 test above: its compiled 8-device program is reused.
    z1, z2 = views(8, 4, seed=4)
    z1 *= 0.5
    labels = np.random.default_rng(4).integers(0, 3, size=8).astype(np.int32)
    reference, target_has_grad = REFERENCES[name]
    sharding = NamedSharding(parallel.make_mesh(), P("batch"))
    loss, (g1, g2) = sharded_value_and_grad(name)(*(jax.device_put(x, sharding) for x in (z1, z2, labels)))
    np.testing.assert_allclose(loss, reference(z1, z2, labels), rtol=1e-5, atol=1e-6)
    ref1 = finite_difference_grad(lambda a: reference(a, z2, labels), z1)
    ref2 = (finite_difference_grad(lambda b: reference(z1, b, labels), z2) if target_has_grad
            else np.zeros_like(z2))
    scale = np.abs(ref1).max()
    assert scale > 1e-3
    np.testing.assert_allclose(g1, ref1, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(g2, ref2, rtol=1e-3, atol=1e-4 * scale)
