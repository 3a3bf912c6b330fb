"""Self-supervised losses: pure jnp, called per replica inside a data-parallel region.

Every loss that touches the batch axis takes `axis_name`. With it, the function runs per replica
(inside `jax.shard_map`) and the mean over replicas of its value (and of its gradients) equals the
single-device value on the concatenated global batch.
"""
from __future__ import annotations

from typing import NamedTuple

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


def _gather_replicas(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """All views of the global batch, and the offset of this replica's rows in it.

    Gradients flow through the gather (its transpose is a reduce-scatter), so each replica's loss
    also pushes on the embeddings other replicas computed, as in the SimCLR reference.
    """
    if axis_name is None:
        return x, jnp.zeros((), jnp.int32)
    gathered = lax.all_gather(x, axis_name, axis=0, tiled=True)
    return gathered, lax.axis_index(axis_name) * x.shape[0]


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature: float,
            axis_name: str | None = None) -> ContrastiveOutput:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1), averaged over all 2N views.

    For anchor i with positive j among the 2N views of the global batch:
        l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)
    with sim the cosine similarity. z1[b] and z2[b] are the two views of example b.
    Per replica: n local examples, candidates are the 2N gathered views of all replicas.
    """
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


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy over the (masked) examples of this replica; labels are int class ids."""
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], -1)[:, 0]
    if mask is None:
        return jnp.mean(losses)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
