"""DINO and SwAV losses: against loops written from the papers' pseudo-code, analytic gradients, Sinkhorn's
marginals, and 8 replicas (shard_map) equal to one device on the global batch, values and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx import losses, parallel

CROPS, GLOBAL_CROPS, N, K = 4, 2, 16, 6   # 2 global + 2 local crops of 16 examples, 6 prototypes / output dims
STUDENT_T, TEACHER_T, MOMENTUM = 0.1, 0.04, 0.9
EPSILON, ITERATIONS, SWAV_T = 0.05, 3, 0.1


def outputs(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_dino(student, teacher, center):
    """DINO's DINOLoss.forward as a loop over (teacher crop, student crop) pairs, in NumPy."""
    total, terms = 0.0, 0
    for t, teacher_crop in enumerate(teacher):
        q = softmax((teacher_crop - center) / TEACHER_T)
        for s, student_crop in enumerate(student):
            if s != t:
                total += np.mean(np.sum(-q * log_softmax(student_crop / STUDENT_T), axis=-1))
                terms += 1
    new_center = MOMENTUM * center + (1 - MOMENTUM) * teacher.reshape(-1, teacher.shape[-1]).mean(0)
    return total / terms, new_center


def reference_dino_grad(student, teacher, center):
    """dL/d student[s, i] = sum_{t != s} (softmax(student[s, i] / T_s) - P_t(i)) / (T_s n pairs)."""
    pairs = len(teacher) * (len(student) - 1)
    grad = np.zeros_like(student)
    for s in range(len(student)):
        for t in range(len(teacher)):
            if s != t:
                grad[s] += (softmax(student[s] / STUDENT_T) - softmax((teacher[t] - center) / TEACHER_T))
    return grad / (STUDENT_T * student.shape[1] * pairs)


def reference_sinkhorn(scores):
    """SwAV's distributed_sinkhorn on one device, in NumPy (float64)."""
    q = np.exp(scores.astype(np.float64) / EPSILON).T   # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(ITERATIONS):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def dino_loss(student, teacher, center, axis_name=None):
    out = losses.dino(student, teacher, center, student_temperature=STUDENT_T, teacher_temperature=TEACHER_T,
                      center_momentum=MOMENTUM, axis_name=axis_name)
    return out.loss, out.center


def swav_loss(scores, queue=None, axis_name=None):
    return losses.swav(scores, temperature=SWAV_T, epsilon=EPSILON, iterations=ITERATIONS,
                       assign_crops=GLOBAL_CROPS, queue_scores=queue, axis_name=axis_name).loss


def on_eight_devices(loss_fn, *arrays):
    """pmean of the per-replica loss (and its other outputs) and its gradient w.r.t. the first argument, each
    [crops, n, ...] array split over the 8 replicas along the examples (axis 1), the center replicated."""
    spec = lambda a: P(None, "batch") if a.ndim == 3 else P()   # noqa: E731

    def per_replica(*args):
        def global_loss(first):
            value, aux = loss_fn(first, *args[1:], axis_name=parallel.BATCH_AXIS)
            return jax.lax.pmean(value, parallel.BATCH_AXIS), aux
        (value, aux), grad = jax.value_and_grad(global_loss, has_aux=True)(args[0])
        return value, aux, grad

    mesh = parallel.make_mesh()
    fn = jax.jit(jax.shard_map(per_replica, mesh=mesh, in_specs=tuple(spec(a) for a in arrays),
                               out_specs=(P(), P(), spec(arrays[0]))))
    return fn(*[jax.device_put(a, NamedSharding(mesh, spec(a))) for a in arrays])


def test_dino_matches_the_reference_loop_and_its_analytic_gradient():
    student, teacher, center = outputs((CROPS, N, K), 0), outputs((GLOBAL_CROPS, N, K), 1), outputs((K,), 2, 0.1)
    (loss, new_center), grad = jax.value_and_grad(dino_loss, has_aux=True)(student, teacher, center)
    expected_loss, expected_center = reference_dino(student, teacher, center)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(new_center, expected_center, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, reference_dino_grad(student, teacher, center), rtol=1e-4, atol=1e-7)
    # The teacher is a target: no gradient flows into it.
    teacher_grad = jax.grad(lambda t: dino_loss(student, t, center)[0])(teacher)
    assert float(jnp.abs(teacher_grad).max()) == 0.0


def test_dino_one_device_equals_eight():
    assert jax.device_count() == 8
    student, teacher, center = outputs((CROPS, N, K), 3), outputs((GLOBAL_CROPS, N, K), 4), outputs((K,), 5, 0.1)
    (one_loss, one_center), one_grad = jax.value_and_grad(dino_loss, has_aux=True)(student, teacher, center)
    eight_loss, eight_center, eight_grad = on_eight_devices(dino_loss, student, teacher, center)
    np.testing.assert_allclose(eight_loss, one_loss, rtol=1e-5)
    # The center's batch mean is all-reduced: the one center every replica holds is the global batch's.
    np.testing.assert_allclose(eight_center, one_center, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(eight_grad, one_grad, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(one_grad).max()) > 1e-3


def test_dino_teacher_entropy_falls_as_the_teacher_sharpens():
    student, teacher, center = outputs((CROPS, N, K), 6), outputs((GLOBAL_CROPS, N, K), 7), np.zeros(K, np.float32)
    entropies = [float(losses.dino(student, teacher, center, student_temperature=STUDENT_T, teacher_temperature=t,
                                   center_momentum=MOMENTUM).teacher_entropy) for t in (100.0, 1.0, 0.01)]
    assert entropies[0] == pytest.approx(np.log(K), rel=1e-3) and entropies[0] > entropies[1] > entropies[2]


def test_dino_refuses_more_teacher_crops_than_student_crops():
    with pytest.raises(ValueError, match="teacher crops"):
        dino_loss(outputs((1, N, K), 0), outputs((2, N, K), 1), np.zeros(K, np.float32))


def test_sinkhorn_matches_swav_and_has_its_marginals():
    scores = outputs((N, K), 8, 0.3)
    codes = np.asarray(losses.sinkhorn(scores, epsilon=EPSILON, iterations=ITERATIONS))
    np.testing.assert_allclose(codes, reference_sinkhorn(scores), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)   # the last step normalises each row exactly
    # Equipartition: with more iterations every prototype holds B / K of the B rows.
    converged = np.asarray(losses.sinkhorn(scores, epsilon=EPSILON, iterations=200))
    np.testing.assert_allclose(converged.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(converged.sum(axis=0), N / K, rtol=1e-3)
    # Cosine scores at a small epsilon: exp(1 / 0.01) overflows float32, exp of the scores less their max does not.
    cosines = np.clip(scores, -1.0, 1.0)
    cosines[0, 0] = 1.0
    sharp = np.asarray(losses.sinkhorn(cosines, epsilon=0.01, iterations=ITERATIONS))
    assert np.isfinite(sharp).all() and np.allclose(sharp.sum(axis=1), 1.0, rtol=1e-5)


def test_sinkhorn_sums_over_every_replica():
    scores = outputs((N, K), 9, 0.3)
    mesh = parallel.make_mesh()
    sharded = jax.jit(jax.shard_map(
        functools.partial(losses.sinkhorn, epsilon=EPSILON, iterations=200, axis_name=parallel.BATCH_AXIS),
        mesh=mesh, in_specs=P("batch"), out_specs=P("batch")))(jax.device_put(scores, NamedSharding(mesh, P("batch"))))
    np.testing.assert_allclose(sharded, losses.sinkhorn(scores, epsilon=EPSILON, iterations=200), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sharded).sum(axis=0), N / K, rtol=1e-3)   # over the global batch


def reference_swav(scores, queue=None):
    """SwAV's training loop: codes of each assigned crop (queue rows first, then dropped), every other crop
    predicting them; returns (loss, dL/dscores)."""
    total, grad, terms = 0.0, np.zeros_like(scores), 0
    for a in range(GLOBAL_CROPS):
        rows = scores[a] if queue is None else np.concatenate([queue[a], scores[a]])
        q = reference_sinkhorn(rows)[-N:]
        for s in range(CROPS):
            if s != a:
                total += np.mean(np.sum(-q * log_softmax(scores[s] / SWAV_T), axis=-1))
                grad[s] += (softmax(scores[s] / SWAV_T) - q) / (SWAV_T * N)
                terms += 1
    return total / terms, grad / terms


@pytest.mark.parametrize("queue_rows", [0, 24])
def test_swav_matches_the_reference_loop_and_its_analytic_gradient(queue_rows):
    scores = outputs((CROPS, N, K), 10, 0.3)
    queue = outputs((GLOBAL_CROPS, queue_rows, K), 11, 0.3) if queue_rows else None
    loss, grad = jax.value_and_grad(swav_loss)(scores, queue)
    expected_loss, expected_grad = reference_swav(scores, queue)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    if queue_rows:   # the queue changes the codes: the test would catch it being ignored
        assert abs(float(loss) - reference_swav(scores)[0]) > 1e-4


@pytest.mark.parametrize("queue_rows", [0, 3])
def test_swav_one_device_equals_eight(queue_rows):
    """Each replica appends its own queue (SwAV keeps one per GPU); one device holds every replica's."""
    scores = outputs((CROPS, N, K), 12, 0.3)
    queues = outputs((GLOBAL_CROPS, 8 * queue_rows, K), 13, 0.3) if queue_rows else None
    one_loss, one_grad = jax.value_and_grad(swav_loss)(scores, queues)
    loss_fn = lambda s, *q, axis_name: (swav_loss(s, q[0] if q else None, axis_name), ())  # noqa: E731
    eight_loss, _, eight_grad = on_eight_devices(loss_fn, scores, *([queues] if queue_rows else []))
    np.testing.assert_allclose(eight_loss, one_loss, rtol=1e-5)
    np.testing.assert_allclose(eight_grad, one_grad, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(one_grad).max()) > 1e-3


def test_swav_refuses_an_assignment_without_a_crop_to_predict_it():
    with pytest.raises(ValueError, match="assigned crops"):
        losses.swav(outputs((2, N, K), 0), temperature=SWAV_T, assign_crops=2)
