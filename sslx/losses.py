"""Self-supervised losses: pure jnp, called per replica inside a data-parallel region.

Every loss that touches the batch axis takes `axis_name`. With it, the function runs per replica
(inside `jax.shard_map`) and the mean over replicas of its value (and of its gradients) equals the
single-device value on the concatenated global batch.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

# Large enough to drop a logit from the softmax, small enough to stay finite in bf16/fp32 arithmetic.
_MASK_VALUE = -1e9


class ContrastiveOutput(NamedTuple):
    loss: jax.Array       # scalar, mean over this replica's 2n anchors
    accuracy: jax.Array   # fraction of anchors whose positive has the top logit
    entropy: jax.Array    # mean entropy (nats) of the anchors' softmax over candidates


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def embedding_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the batch std of l2-normalised z: about 1/sqrt(d) when the embeddings
    spread over the sphere, towards 0 when they collapse to one point (SimSiam, sec. 4.1)."""
    return jnp.mean(jnp.std(l2_normalize(z.astype(jnp.float32)), axis=0))


def check_pair(a: jax.Array, b: jax.Array) -> None:
    """Two batches of per-example vectors [n, d] of one shape and a float dtype (the two views' embeddings, a
    prediction and its target). Shapes are static, so this costs nothing in the compiled step; it turns a
    broadcast that would silently compute a wrong loss into an error at trace time."""
    chex.assert_rank([a, b], 2)
    chex.assert_equal_shape([a, b])
    chex.assert_type([a, b], float)


def check_labels(labels: jax.Array, n: int) -> None:
    """Integer class ids, one per example."""
    chex.assert_shape(labels, (n,))
    chex.assert_type(labels, int)


def _gather_replicas(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """All views of the global batch, and the offset of this replica's rows in it.

    Gradients flow through the gather (its transpose is a reduce-scatter), so each replica's loss
    also pushes on the embeddings other replicas computed, as in the SimCLR reference.
    """
    if axis_name is None:
        return x, jnp.zeros((), jnp.int32)
    gathered = lax.all_gather(x, axis_name, axis=0, tiled=True)
    return gathered, lax.axis_index(axis_name) * x.shape[0]


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature: float, axis_name: str | None = None,
            chunk_size: int = 0) -> ContrastiveOutput:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1), averaged over all 2N views.

    For anchor i with positive j among the 2N views of the global batch:
        l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)
    with sim the cosine similarity. z1[b] and z2[b] are the two views of example b.
    Per replica: n local examples, candidates are the 2N gathered views of all replicas.
    `chunk_size` > 0 computes the same loss with `nt_xent_chunked`, for huge global batches.
    """
    check_pair(z1, z2)
    if chunk_size:
        return nt_xent_chunked(z1, z2, temperature=temperature, chunk_size=chunk_size, axis_name=axis_name)
    n = z1.shape[0]
    z1 = l2_normalize(z1.astype(jnp.float32))
    z2 = l2_normalize(z2.astype(jnp.float32))
    all1, offset = _gather_replicas(z1, axis_name)
    all2, _ = _gather_replicas(z2, axis_name)
    big_n = all1.shape[0]
    candidates = jnp.concatenate([all1, all2], axis=0)             # [2N, d]
    anchors = jnp.concatenate([z1, z2], axis=0)                     # [2n, d]
    logits = anchors @ candidates.T / temperature                   # [2n, 2N]

    rows = jnp.arange(n) + offset                                   # global index of each local example
    self_idx = jnp.concatenate([rows, rows + big_n])                # anchor's own column
    pos_idx = jnp.concatenate([rows + big_n, rows])                 # its other view's column
    cols = jnp.arange(2 * big_n)
    logits = jnp.where(cols[None, :] == self_idx[:, None], _MASK_VALUE, logits)

    log_probs = jax.nn.log_softmax(logits, axis=-1)
    pos_log_prob = jnp.take_along_axis(log_probs, pos_idx[:, None], axis=-1)[:, 0]
    loss = -jnp.mean(pos_log_prob)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == pos_idx)
    probs = jnp.exp(log_probs)
    entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
    return ContrastiveOutput(loss, lax.stop_gradient(accuracy), lax.stop_gradient(entropy))


def nt_xent_chunked(z1: jax.Array, z2: jax.Array, *, temperature: float, chunk_size: int,
                    axis_name: str | None = None) -> ContrastiveOutput:
    """`nt_xent` that never holds more than [2n, chunk_size] logits, forward or backward.

    The 2N candidates are scanned in chunks of `chunk_size` columns with an online log-sum-exp (a
    running max and a sum rescaled whenever the max grows); the backward pass recomputes each chunk's
    logits from the saved per-anchor log-sum-exp instead of storing them. Logits per replica:
    2n x chunk_size floats (64 MB at 16,384 local anchors and chunk_size=1,024), against 2n x 2N.
    """
    check_pair(z1, z2)
    n = z1.shape[0]
    z1 = l2_normalize(z1.astype(jnp.float32))
    z2 = l2_normalize(z2.astype(jnp.float32))
    all1, offset = _gather_replicas(z1, axis_name)
    all2, _ = _gather_replicas(z2, axis_name)
    big_n = all1.shape[0]
    rows = jnp.arange(n) + offset
    loss, accuracy, entropy = _chunked_contrastive(
        jnp.concatenate([z1, z2]), jnp.concatenate([all1, all2]),
        jnp.concatenate([rows, rows + big_n]), jnp.concatenate([rows + big_n, rows]), temperature, chunk_size)
    return ContrastiveOutput(loss, lax.stop_gradient(accuracy), lax.stop_gradient(entropy))


def _candidate_chunks(candidates: jax.Array, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """[num_chunks, chunk_size, d] (zero-padded at the end) and each chunk's first column."""
    num_chunks = -(-candidates.shape[0] // chunk_size)
    padded = jnp.pad(candidates, ((0, num_chunks * chunk_size - candidates.shape[0]), (0, 0)))
    return padded.reshape(num_chunks, chunk_size, -1), jnp.arange(num_chunks) * chunk_size


def _chunk_logits(anchors, chunk, start, self_idx, num_candidates, temperature):
    """One chunk of `nt_xent`'s logits with the self-similarity and the padding masked."""
    cols = start + jnp.arange(chunk.shape[0])
    logits = anchors @ chunk.T / temperature
    masked = (cols[None, :] == self_idx[:, None]) | (cols[None, :] >= num_candidates)
    return jnp.where(masked, _MASK_VALUE, logits), cols


def _chunked_forward(anchors, candidates, self_idx, pos_idx, temperature, chunk_size):
    chunks, starts = _candidate_chunks(candidates, chunk_size)

    def add_chunk(carry, chunk_and_start):
        running_max, sum_exp, sum_exp_logit, pos_logit = carry
        logits, cols = _chunk_logits(anchors, *chunk_and_start, self_idx, candidates.shape[0], temperature)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
        rescale = jnp.exp(running_max - new_max)
        weights = jnp.exp(logits - new_max[:, None])
        # The positive's logit is read from the same chunk values the max saw, so accuracy compares equals.
        pos_logit = pos_logit + jnp.sum(jnp.where(cols[None, :] == pos_idx[:, None], logits, 0.0), axis=-1)
        return (new_max, sum_exp * rescale + jnp.sum(weights, axis=-1),
                sum_exp_logit * rescale + jnp.sum(weights * logits, axis=-1), pos_logit), None

    zeros = jnp.zeros_like(anchors[:, 0])
    init = (zeros - jnp.inf, zeros, zeros, zeros)
    (row_max, sum_exp, sum_exp_logit, pos_logit), _ = lax.scan(add_chunk, init, (chunks, starts))
    lse = row_max + jnp.log(sum_exp)
    loss = jnp.mean(lse - pos_logit)
    accuracy = jnp.mean((pos_logit >= row_max).astype(jnp.float32))
    entropy = jnp.mean(lse - sum_exp_logit / sum_exp)   # H(p) = lse - E_p[logit]
    return (loss, accuracy, entropy), (anchors, candidates, self_idx, pos_idx, lse)


def _chunked_backward(temperature, chunk_size, residuals, cotangents):
    """d loss / d logit_ik = (p_ik - [k is i's positive]) / 2n, recomputed chunk by chunk."""
    anchors, candidates, self_idx, pos_idx, lse = residuals
    chunks, starts = _candidate_chunks(candidates, chunk_size)
    scale = cotangents[0] / anchors.shape[0] / temperature   # accuracy and entropy carry no gradient

    def chunk_grads(d_anchors, chunk_and_start):
        chunk = chunk_and_start[0]
        logits, cols = _chunk_logits(anchors, *chunk_and_start, self_idx, candidates.shape[0], temperature)
        probs = jnp.exp(logits - lse[:, None])
        d_logits = (probs - (cols[None, :] == pos_idx[:, None])) * scale
        return d_anchors + d_logits @ chunk, d_logits.T @ anchors

    d_anchors, d_chunks = lax.scan(chunk_grads, jnp.zeros_like(anchors), (chunks, starts))
    d_candidates = d_chunks.reshape(-1, candidates.shape[1])[:candidates.shape[0]]
    return d_anchors, d_candidates, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_contrastive(anchors, candidates, self_idx, pos_idx, temperature, chunk_size):
    """(mean NT-Xent over the anchors, accuracy, entropy) from chunks of candidate columns."""
    return _chunked_forward(anchors, candidates, self_idx, pos_idx, temperature, chunk_size)[0]


_chunked_contrastive.defvjp(_chunked_forward, _chunked_backward)


def masked_mean(x: jax.Array, mask: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Mean of x over the rows where mask is 1, over the global batch when `axis_name` is given (0 if none).

    Sums and counts are all-reduced separately: replicas may hold different numbers of masked rows, so
    the mean of per-replica means would weight a replica's rows by how few it has.
    """
    total, count = jnp.sum(x * mask), jnp.sum(mask)
    if axis_name is not None:
        total, count = lax.psum(total, axis_name), lax.psum(count, axis_name)
    return total / jnp.maximum(count, 1.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                          axis_name: str | None = None) -> jax.Array:
    """Mean cross-entropy over the (masked) examples; labels are int class ids.

    With `axis_name` and a mask, the mean is over the masked examples of the global batch (see
    `masked_mean`); without either it is this replica's mean.
    """
    chex.assert_rank(logits, 2)
    check_labels(labels, logits.shape[0])
    if mask is not None:
        chex.assert_shape(mask, (logits.shape[0],))
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], -1)[:, 0]
    if mask is None:
        return jnp.mean(losses)
    return masked_mean(losses, mask, axis_name)


def _global_mean(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean over the leading (batch) axis of the global batch; replicas hold equal shares."""
    mean = jnp.mean(x, axis=0)
    return mean if axis_name is None else lax.pmean(mean, axis_name)


def _off_diagonal_sum_of_squares(m: jax.Array) -> jax.Array:
    return jnp.sum(m * m) - jnp.sum(jnp.diagonal(m) ** 2)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-row cosine similarity, in float32."""
    return jnp.sum(l2_normalize(a.astype(jnp.float32)) * l2_normalize(b.astype(jnp.float32)), axis=-1)


def byol_regression(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL (Grill et al. 2020, eq. 2): ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z), mean over examples.

    `z` is the target projection and gets no gradient. Per example, so no axis_name: the loop's
    pmean over replicas gives the global mean.
    """
    check_pair(p, z)
    return jnp.mean(2.0 - 2.0 * cosine_similarity(p, lax.stop_gradient(z)))


def simsiam_negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """SimSiam (Chen & He 2021, eq. 1): D(p, z) = -cos(p, stopgrad(z)), mean over examples."""
    check_pair(p, z)
    return -jnp.mean(cosine_similarity(p, lax.stop_gradient(z)))


def _contrastive_output(logits: jax.Array, pos_idx: jax.Array, scale: float = 1.0) -> ContrastiveOutput:
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    loss = -scale * jnp.mean(jnp.take_along_axis(log_probs, pos_idx[:, None], axis=-1)[:, 0])
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == pos_idx)
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
    return ContrastiveOutput(loss, lax.stop_gradient(accuracy), lax.stop_gradient(entropy))


def info_nce_queue(q: jax.Array, k: jax.Array, queue: jax.Array, *, temperature: float) -> ContrastiveOutput:
    """MoCo InfoNCE (He et al. 2020, eq. 1) with a queue of negatives, mean over queries:

        l(q) = -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k- in queue} exp(q.k- / t))

    q, k+ are l2-normalised here; the queue rows are taken as given (MoCo stores normalised keys).
    Keys and queue get no gradient. Per query, so no axis_name: the queue is the same on every replica.
    """
    check_pair(q, k)
    chex.assert_rank(queue, 2)
    chex.assert_axis_dimension(queue, 1, q.shape[1])
    q = l2_normalize(q.astype(jnp.float32))
    k = lax.stop_gradient(l2_normalize(k.astype(jnp.float32)))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)                    # [n, 1]
    negatives = q @ lax.stop_gradient(queue.astype(jnp.float32)).T      # [n, K]
    logits = jnp.concatenate([positive, negatives], axis=-1) / temperature
    return _contrastive_output(logits, jnp.zeros(q.shape[0], jnp.int32))


def moco_v3_contrastive(q: jax.Array, k: jax.Array, *, temperature: float,
                        axis_name: str | None = None) -> ContrastiveOutput:
    """MoCo v3 (Chen, Xie & He 2021, alg. 1): 2t x InfoNCE of each query against the keys of the global batch.

        l(q_i) = -2t log exp(q_i.k_i / t) / sum_{j in global batch} exp(q_i.k_j / t)

    q, k l2-normalised; keys come from the momentum encoder and get no gradient, so the gather
    carries none. Mean over this replica's queries.
    """
    check_pair(q, k)
    q = l2_normalize(q.astype(jnp.float32))
    k = lax.stop_gradient(l2_normalize(k.astype(jnp.float32)))
    keys, offset = _gather_replicas(k, axis_name)
    logits = q @ keys.T / temperature
    return _contrastive_output(logits, jnp.arange(q.shape[0]) + offset, scale=2.0 * temperature)


def barlow_twins(z1: jax.Array, z2: jax.Array, *, lambda_offdiag: float = 5e-3, eps: float = 1e-5,
                 axis_name: str | None = None) -> jax.Array:
    """Barlow Twins (Zbontar et al. 2021, eq. 1-2) on the global batch of N examples:

        C_ij = sum_b zn1_bi zn2_bj / N,   zn = (z - mean_b z) / sqrt(var_b z + eps)
        L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2

    Means, (biased) variances and C are all-reduced over `axis_name`, so every replica returns the
    loss of the global batch.
    """
    check_pair(z1, z2)

    def standardise(z):
        z = z.astype(jnp.float32)
        centred = z - _global_mean(z, axis_name)
        return centred * lax.rsqrt(_global_mean(centred * centred, axis_name) + eps)

    zn1, zn2 = standardise(z1), standardise(z2)
    corr = zn1.T @ zn2 / zn1.shape[0]
    corr = corr if axis_name is None else lax.pmean(corr, axis_name)
    on_diagonal = jnp.sum((1.0 - jnp.diagonal(corr)) ** 2)
    return on_diagonal + lambda_offdiag * _off_diagonal_sum_of_squares(corr)


class VICRegTerms(NamedTuple):
    loss: jax.Array
    invariance: jax.Array
    variance: jax.Array
    covariance: jax.Array


def vicreg(z1: jax.Array, z2: jax.Array, *, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
           axis_name: str | None = None) -> VICRegTerms:
    """VICReg (Bardes et al. 2022, eq. 1-6) on the global batch of N examples, embedding dim d:

        s = mean ||z1 - z2||^2 / d                               (invariance, per-dimension MSE)
        v(z) = mean_j max(0, gamma - sqrt(Var_b z_j + eps))      (unbiased variance)
        c(z) = sum_{i != j} C(z)_ij^2 / d,  C(z) = sum_b (z_b - zbar)(z_b - zbar)^T / (N - 1)
        L = lambda s + mu (v(z1) + v(z2)) / 2 + nu (c(z1) + c(z2))

    with lambda, mu, nu = sim_coeff, std_coeff, cov_coeff (the paper's reference code halves the
    variance sum, as here). All statistics are all-reduced over `axis_name`.
    """
    check_pair(z1, z2)
    z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
    n, d = z1.shape
    big_n = n if axis_name is None else n * lax.axis_size(axis_name)
    invariance = jnp.mean(_global_mean((z1 - z2) ** 2, axis_name))

    def variance_and_covariance(z):
        centred = z - _global_mean(z, axis_name)
        cov = centred.T @ centred
        cov = (cov if axis_name is None else lax.psum(cov, axis_name)) / (big_n - 1)
        std = jnp.sqrt(jnp.diagonal(cov) + eps)
        return jnp.mean(jax.nn.relu(gamma - std)), _off_diagonal_sum_of_squares(cov) / d

    v1, c1 = variance_and_covariance(z1)
    v2, c2 = variance_and_covariance(z2)
    variance, covariance = (v1 + v2) / 2, c1 + c2
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return VICRegTerms(loss, invariance, variance, covariance)


def supcon(z1: jax.Array, z2: jax.Array, labels: jax.Array, *, temperature: float,
           axis_name: str | None = None) -> ContrastiveOutput:
    """SupCon L^sup_out (Khosla et al. 2020, eq. 2), averaged over all 2N views of the global batch:

        l(i) = -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t)

    P(i) = every other view whose label equals i's (at least i's own second view). Labels and
    embeddings are gathered over `axis_name`; gradients flow through the gather as in nt_xent.
    With all labels distinct this is NT-Xent. `accuracy`: the top logit is a positive.
    """
    check_pair(z1, z2)
    check_labels(labels, z1.shape[0])
    n = z1.shape[0]
    z1 = l2_normalize(z1.astype(jnp.float32))
    z2 = l2_normalize(z2.astype(jnp.float32))
    all1, offset = _gather_replicas(z1, axis_name)
    all2, _ = _gather_replicas(z2, axis_name)
    all_labels, _ = _gather_replicas(labels, axis_name)
    big_n = all1.shape[0]
    candidates = jnp.concatenate([all1, all2], axis=0)               # [2N, d]
    candidate_labels = jnp.concatenate([all_labels, all_labels])
    anchors = jnp.concatenate([z1, z2], axis=0)                       # [2n, d]
    anchor_labels = jnp.concatenate([labels, labels])
    rows = jnp.arange(n) + offset
    self_idx = jnp.concatenate([rows, rows + big_n])
    not_self = jnp.arange(2 * big_n)[None, :] != self_idx[:, None]
    positives = (anchor_labels[:, None] == candidate_labels[None, :]) & not_self

    logits = jnp.where(not_self, anchors @ candidates.T / temperature, _MASK_VALUE)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    num_positives = jnp.sum(positives, axis=-1)
    loss = -jnp.mean(jnp.sum(jnp.where(positives, log_probs, 0.0), axis=-1) / num_positives)
    top = jnp.argmax(logits, axis=-1)
    accuracy = jnp.mean(jnp.take_along_axis(positives, top[:, None], axis=-1))
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
    return ContrastiveOutput(loss, lax.stop_gradient(accuracy), lax.stop_gradient(entropy))


def distillation(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float) -> jax.Array:
    """SimCLRv2's distillation loss (Chen et al. 2020b, eq. 3 without labels), mean over this replica's examples:

        L = tau^2 x mean_i [ -sum_y softmax(t_i / tau)_y log softmax(s_i / tau)_y ]

    The teacher side is a fixed target (stop_gradient). The tau^2 keeps the gradient's size independent of tau
    (Hinton et al. 2015): dL/ds_i = tau x (softmax(s_i / tau) - softmax(t_i / tau)) / batch.
    """
    check_pair(student_logits, teacher_logits)
    targets = jax.nn.softmax(lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
    log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature ** 2 * jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


def _check_crops(student: jax.Array, teacher: jax.Array) -> None:
    """Per-crop outputs [crops, n, K]: the student's of every crop, the teacher's (or the assigned) crops first."""
    chex.assert_rank([student, teacher], 3)
    chex.assert_type([student, teacher], float)
    chex.assert_equal_shape([student[0], teacher[0]])
    if teacher.shape[0] > student.shape[0]:
        raise ValueError(f"{teacher.shape[0]} teacher crops for {student.shape[0]} student crops: the teacher's "
                         f"crops must be the student's first ones")


def _cross_crop_entropy(targets: jax.Array, student: jax.Array, temperature: float) -> jax.Array:
    """Mean over the pairs (target crop t, student crop s != t) of mean_i [-sum_k targets[t,i,k] log p_s[i,k]],
    p_s = softmax(student[s] / temperature): the swapped prediction of DINO and SwAV (target crop t is student
    crop t, so a crop never predicts its own target)."""
    log_probs = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)   # [S, n, K]
    cross = -jnp.einsum("tik,sik->tsi", targets, log_probs).mean(axis=-1)                  # [T, S]
    pairs = jnp.arange(targets.shape[0])[:, None] != jnp.arange(student.shape[0])[None, :]
    return jnp.sum(jnp.where(pairs, cross, 0.0)) / jnp.sum(pairs)


class DinoOutput(NamedTuple):
    loss: jax.Array              # scalar, mean over this replica's examples and the crop pairs
    center: jax.Array            # [K] the updated center (no gradient), the same on every replica
    teacher_entropy: jax.Array   # mean entropy (nats) of the teacher's sharpened distribution: 0 = collapse to one


def dino_center(center: jax.Array, teacher: jax.Array, *, momentum: float,
                axis_name: str | None = None) -> jax.Array:
    """DINO's center update c <- m c + (1 - m) mean(teacher outputs), the mean over every teacher crop of the global
    batch (all-reduced over `axis_name`, as DINO's reference all-reduces it), so every replica holds one center."""
    batch_center = _global_mean(lax.stop_gradient(teacher).astype(jnp.float32).reshape(-1, teacher.shape[-1]),
                                axis_name)
    return momentum * center + (1.0 - momentum) * batch_center


def dino(student: jax.Array, teacher: jax.Array, center: jax.Array, *, student_temperature: float,
         teacher_temperature: float | jax.Array, center_momentum: float,
         axis_name: str | None = None) -> DinoOutput:
    """DINO's loss (Caron et al. 2021, eq. 1 and alg. 1) and the next center.

    student: [S, n, K] head outputs of every crop (the global crops first); teacher: [T, n, K] the EMA teacher's
    outputs of the T global crops. The teacher's distribution is centered and sharpened, softmax((t - center) /
    teacher_temperature), and gets no gradient; each teacher crop is predicted by every student crop but its own:
        L = mean_{t, s != t} mean_i H(P_t(i), softmax(student[s, i] / student_temperature)).
    Per example given the center, so this replica's mean; the mean over replicas equals the global batch's value.
    `teacher_temperature` may be a traced scalar (DINO warms it up over the first epochs).
    """
    _check_crops(student, teacher)
    chex.assert_shape(center, (teacher.shape[-1],))
    centered = lax.stop_gradient(teacher).astype(jnp.float32) - center
    targets = jax.nn.softmax(centered / teacher_temperature, axis=-1)
    entropy = -jnp.mean(jnp.sum(targets * jnp.log(jnp.maximum(targets, 1e-30)), axis=-1))
    return DinoOutput(_cross_crop_entropy(targets, student, student_temperature),
                      dino_center(center, teacher, momentum=center_momentum, axis_name=axis_name),
                      lax.stop_gradient(entropy))


def _rows_logsumexp(x: jax.Array, axis_name: str | None) -> jax.Array:
    """log sum_i exp(x[i, k]) over the rows of every replica, [1, K]."""
    top = jnp.max(x, axis=0, keepdims=True)
    top = top if axis_name is None else lax.pmax(top, axis_name)
    total = jnp.sum(jnp.exp(x - top), axis=0, keepdims=True)
    return top + jnp.log(total if axis_name is None else lax.psum(total, axis_name))


def sinkhorn(scores: jax.Array, *, epsilon: float, iterations: int, axis_name: str | None = None) -> jax.Array:
    """Soft equipartitioned assignments of rows to prototypes: SwAV's Sinkhorn-Knopp (Caron et al. 2020, eq. 3).

    scores [m, K] (row i's similarity to each prototype) -> Q [m, K], Q = diag(u) exp(scores / epsilon) diag(v)
    with every row summing to 1 and, as the iterations converge, every prototype to B / K of the B rows of the
    global batch: the prototype sums run over every replica's rows (psum over `axis_name`), as in SwAV's
    `distributed_sinkhorn`. The last step normalises the rows, so those sums are exact. No gradient.
    The iterations run on log Q: the same Q as SwAV's, where exp(scores / epsilon) itself would overflow or
    underflow float32 (|scores| / epsilon beyond ~87, e.g. cosines at epsilon 0.01).
    """
    chex.assert_rank(scores, 2)
    log_q = lax.stop_gradient(scores).astype(jnp.float32) / epsilon
    num_rows = scores.shape[0] if axis_name is None else lax.psum(scores.shape[0], axis_name)
    log_rows, log_prototypes = jnp.log(jnp.float32(num_rows)), jnp.log(jnp.float32(scores.shape[1]))

    def iteration(_, log_q):
        log_q = log_q - _rows_logsumexp(log_q, axis_name) - log_prototypes             # prototypes: 1/K each
        return log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - log_rows       # rows: 1/B each

    # SwAV first divides Q by its total; the prototype step rescales every entry anyway.
    return jnp.exp(lax.fori_loop(0, iterations, iteration, log_q) + log_rows)


def swav(scores: jax.Array, *, temperature: float, epsilon: float = 0.05, iterations: int = 3,
         assign_crops: int = 2, queue_scores: jax.Array | None = None,
         axis_name: str | None = None) -> ContrastiveOutput:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1) over all crops.

    scores: [S, n, K] every crop's normalised features times the normalised prototypes (the global crops first).
    The codes of the first `assign_crops` crops come from `sinkhorn` over the global batch; with `queue_scores`
    [assign_crops, q, K] (this replica's queued features of those crops times the current prototypes) the
    assignment also runs over the queue's rows, which only help equipartition: their codes are dropped. Every
    other crop predicts each code with softmax(scores / temperature):
        L = mean_{a, s != a} mean_i H(Q_a(i), softmax(scores[s, i] / temperature)).
    Per example given the codes, so this replica's mean; the mean over replicas equals the global batch's value.
    Returns the loss; as accuracy, how often crop 1's top prototype is that of crop 0's code; as entropy, the
    codes' mean entropy (nats).
    """
    chex.assert_rank(scores, 3)
    chex.assert_type(scores, float)
    if not 1 <= assign_crops < scores.shape[0]:
        raise ValueError(f"swav: {assign_crops} assigned crops of {scores.shape[0]}: assign at least one crop and "
                         f"keep at least one other to predict it")
    n = scores.shape[1]
    assigned = scores[:assign_crops]
    if queue_scores is not None:
        chex.assert_rank(queue_scores, 3)
        chex.assert_equal_shape_prefix([queue_scores, assigned], 1)
        assigned = jnp.concatenate([queue_scores.astype(assigned.dtype), assigned], axis=1)
    codes = jnp.stack([sinkhorn(rows, epsilon=epsilon, iterations=iterations, axis_name=axis_name)[-n:]
                       for rows in assigned])                                           # [A, n, K]
    loss = _cross_crop_entropy(codes, scores, temperature)
    accuracy = jnp.mean(jnp.argmax(scores[1], -1) == jnp.argmax(codes[0], -1))
    entropy = -jnp.mean(jnp.sum(codes * jnp.log(jnp.maximum(codes, 1e-30)), axis=-1))
    return ContrastiveOutput(loss, lax.stop_gradient(accuracy), lax.stop_gradient(entropy))
