"""Chunked NT-Xent: the plain loss, accuracy, entropy and gradients, on 1 and 8 devices, in less memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import losses, parallel


def random_views(n, d, seed):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    return z1, (z1 + 0.7 * rng.normal(size=(n, d))).astype(np.float32)


def loss_and_grads(z1, z2, mesh=None, **kwargs):
    """Mean loss, metrics and embedding gradients; per replica over `mesh` when given."""
    axis_name = parallel.BATCH_AXIS if mesh is not None else None

    def fn(a, b):
        def loss(a, b):
            out = losses.nt_xent(a, b, axis_name=axis_name, **kwargs)
            mean = out.loss if mesh is None else jax.lax.pmean(out.loss, axis_name)
            return mean, out
        (value, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(a, b)
        if mesh is not None:
            out = jax.tree.map(lambda x: jax.lax.pmean(x, axis_name), out)
        return value, out, grads

    if mesh is None:
        return jax.jit(fn)(z1, z2)
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P("batch"), P("batch")),
                            out_specs=(P(), P(), (P("batch"), P("batch"))))
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, P("batch")))
    return jax.jit(sharded)(put(z1), put(z2))


def assert_same(plain, chunked):
    (loss, out, grads), (c_loss, c_out, c_grads) = plain, chunked
    np.testing.assert_allclose(c_loss, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_out.accuracy, out.accuracy, atol=1e-6)
    np.testing.assert_allclose(c_out.entropy, out.entropy, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(grads[0]).max()) > 1e-4
    for g, c in zip(grads, c_grads):
        np.testing.assert_allclose(c, g, rtol=1e-4, atol=1e-6)


# 2N = 64 candidates: chunks that divide it, that leave a padded last chunk, one chunk, and one column.
@pytest.mark.parametrize("chunk_size", [16, 24, 64, 100, 1])
def test_chunked_equals_plain_one_device(chunk_size):
    z1, z2 = random_views(32, 16, seed=chunk_size)
    plain = loss_and_grads(z1, z2, temperature=0.1)
    assert_same(plain, loss_and_grads(z1, z2, temperature=0.1, chunk_size=chunk_size))


@pytest.mark.parametrize("chunk_size", [8, 12])
def test_chunked_equals_plain_eight_devices(chunk_size):
    z1, z2 = random_views(32, 16, seed=3)
    one_device = loss_and_grads(z1, z2, temperature=0.2)
    mesh = parallel.make_mesh()
    assert_same(one_device, loss_and_grads(z1, z2, mesh, temperature=0.2, chunk_size=chunk_size))
    assert_same(loss_and_grads(z1, z2, mesh, temperature=0.2),
                loss_and_grads(z1, z2, mesh, temperature=0.2, chunk_size=chunk_size))


def test_perfect_views_are_accurate_and_certain():
    z1, _ = random_views(16, 32, seed=0)
    out = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z1), temperature=0.01, chunk_size=5)
    assert float(out.accuracy) == 1.0 and float(out.entropy) < 1e-3


def temp_bytes(chunk_size, global_batch=4096, dim=128):
    """Compiled scratch memory per device of loss + gradients on 8 devices (no arrays allocated)."""
    mesh = parallel.make_mesh()
    spec = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=NamedSharding(mesh, P("batch")))

    def per_replica(a, b):
        fn = lambda a, b: jax.lax.pmean(  # noqa: E731
            losses.nt_xent(a, b, temperature=0.1, axis_name="batch", chunk_size=chunk_size).loss, "batch")
        return jax.grad(fn, argnums=(0, 1))(a, b)

    sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=(P("batch"),) * 2, out_specs=(P("batch"),) * 2)
    return jax.jit(sharded).lower(spec, spec).compile().memory_analysis().temp_size_in_bytes


def test_chunked_bounds_logit_memory():
    # Per device: 1,024 anchors x 8,192 candidates = 32 MB of fp32 logits for the plain loss; chunked, 1 MB
    # of logits per chunk, and the rest is [8,192, 128] embeddings and their gradients (4 MB each).
    logits_bytes = 1024 * 8192 * 4
    plain, chunked = temp_bytes(0), temp_bytes(256)
    assert plain > 2 * logits_bytes
    assert chunked < logits_bytes / 2, (plain, chunked)
