"""NT-Xent against a direct reference, and 1 device == 8 devices for loss and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import losses, parallel


def reference_nt_xent(z1, z2, temperature):
    """The paper's definition, looped: mean over all 2N anchors of -log softmax of the positive."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sims = np.array([z[i] @ z[k] / temperature for k in range(n2)])
        denom = sum(np.exp(sims[k]) for k in range(n2) if k != i)
        total += -np.log(np.exp(sims[j]) / denom)
    return total / n2


def random_views(n, d, seed):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return z1, z2


@pytest.mark.parametrize("n,d,temperature", [(4, 3, 0.5), (16, 8, 0.1), (8, 128, 1.0), (32, 16, 0.07)])
def test_nt_xent_matches_reference(n, d, temperature):
    z1, z2 = random_views(n, d, seed=n + d)
    out = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature=temperature)
    np.testing.assert_allclose(out.loss, reference_nt_xent(z1, z2, temperature), rtol=1e-5, atol=1e-5)


def test_contrastive_accuracy_and_entropy():
    z1, _ = random_views(8, 16, seed=0)
    perfect = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z1), temperature=0.01)
    assert float(perfect.accuracy) == 1.0
    assert float(perfect.entropy) < 1e-3
    shuffled = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z1[::-1]), temperature=100.0)
    # At a huge temperature the softmax is uniform over the 2N-1 candidates.
    np.testing.assert_allclose(shuffled.entropy, np.log(15), rtol=1e-3)


def sharded_loss_and_grads(z1, z2, temperature, mesh):
    """Loss and gradients w.r.t. the embeddings with per-replica nt_xent over the mesh."""

    def per_replica(a, b):
        def loss_fn(a, b):
            out = losses.nt_xent(a, b, temperature=temperature, axis_name=parallel.BATCH_AXIS)
            return jax.lax.pmean(out.loss, parallel.BATCH_AXIS)
        return jax.value_and_grad(loss_fn, argnums=(0, 1))(a, b)

    fn = jax.jit(jax.shard_map(per_replica, mesh=mesh, in_specs=(P("batch"), P("batch")),
                               out_specs=(P(), (P("batch"), P("batch")))))
    sharding = NamedSharding(mesh, P("batch"))
    return fn(jax.device_put(z1, sharding), jax.device_put(z2, sharding))


@pytest.mark.parametrize("n_per_device,d,temperature", [(1, 4, 0.5), (4, 16, 0.1), (8, 32, 0.2)])
def test_nt_xent_one_device_equals_eight(n_per_device, d, temperature):
    assert jax.device_count() == 8
    z1, z2 = random_views(8 * n_per_device, d, seed=d)
    one_loss, one_grads = jax.value_and_grad(
        lambda a, b: losses.nt_xent(a, b, temperature=temperature).loss, argnums=(0, 1))(z1, z2)
    eight_loss, eight_grads = sharded_loss_and_grads(z1, z2, temperature, parallel.make_mesh())
    np.testing.assert_allclose(eight_loss, one_loss, rtol=1e-5, atol=1e-6)
    for one, eight in zip(one_grads, eight_grads):
        np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-7)
    # Gradients are not trivially zero: the test would catch a missing cross-replica term.
    assert float(jnp.abs(one_grads[0]).max()) > 1e-4


def test_softmax_cross_entropy_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = jnp.array([0, 1, 1])
    full = losses.softmax_cross_entropy(logits, labels)
    masked = losses.softmax_cross_entropy(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(masked, -np.log(np.exp(2) / (np.exp(2) + 1)), rtol=1e-6)
    assert float(full) > float(masked)


@pytest.mark.parametrize("call", [
    lambda z: losses.nt_xent(z[:4], z[:5], temperature=0.5),                      # views of different batches
    lambda z: losses.byol_regression(z[:4], z[:4, :3]),                             # prediction vs target width
    lambda z: losses.barlow_twins(z[:4, None], z[:4, None]),                        # not [n, d]
    lambda z: losses.supcon(z[:4], z[:4], jnp.zeros(4), temperature=0.5),          # float labels
    lambda z: losses.info_nce_queue(z[:4], z[:4], z[:, :3], temperature=0.2),      # queue of another width
    lambda z: losses.softmax_cross_entropy(z[:4], jnp.zeros(5, jnp.int32)),         # one label too many
    lambda z: losses.vicreg(z[:4].astype(jnp.int32), z[:4].astype(jnp.int32)),      # integer embeddings
], ids=["nt_xent", "byol", "barlow_twins", "supcon", "moco_queue", "cross_entropy", "vicreg"])
def test_losses_refuse_mismatched_inputs(call):
    # Each of these would broadcast or cast silently into a wrong loss without the chex checks.
    with pytest.raises(AssertionError, match="Chex"):
        call(jnp.ones((8, 6)))


def probe_logits_and_labels():
    """16 rows (2 per replica on 8 devices); unlabelled (-1): both rows of replica 0, one row of replicas 1 and 5."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(16, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=16).astype(np.int32)
    labels[[0, 1, 2, 11]] = -1
    return logits, labels


def masked_cross_entropy(logits, labels, axis_name):
    mask = (labels >= 0).astype(jnp.float32)
    return losses.softmax_cross_entropy(logits, jnp.maximum(labels, 0), mask, axis_name=axis_name)


def test_masked_cross_entropy_is_the_global_mean_over_labelled_rows():
    logits, labels = probe_logits_and_labels()
    labelled = np.flatnonzero(labels >= 0)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    ref_loss = -np.mean(np.log(probs[labelled, labels[labelled]]))
    ref_grad = np.zeros_like(probs)
    ref_grad[labelled] = (probs[labelled] - np.eye(5)[labels[labelled]]) / len(labelled)

    one_loss, one_grad = jax.value_and_grad(masked_cross_entropy)(logits, labels, None)

    def per_replica(x, y):
        # As the train step differentiates it: the pmean over replicas of each replica's loss.
        return jax.value_and_grad(
            lambda x: jax.lax.pmean(masked_cross_entropy(x, y, parallel.BATCH_AXIS), parallel.BATCH_AXIS))(x)

    mesh = parallel.make_mesh()
    sharding = NamedSharding(mesh, P("batch"))
    eight_loss, eight_grad = jax.jit(jax.shard_map(per_replica, mesh=mesh, in_specs=(P("batch"), P("batch")),
                                                   out_specs=(P(), P("batch"))))(
        jax.device_put(logits, sharding), jax.device_put(labels, sharding))
    for loss, grad in ((one_loss, one_grad), (eight_loss, eight_grad)):
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
