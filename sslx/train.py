"""The train state and the one pure, data-parallel pretraining step."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sslx import parallel
from sslx.methods.base import Method, check_batch
from sslx.parallel import BATCH_AXIS


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any   # method state: EMA target params, queues, ...


def create_train_state(method: Method, optimizer: optax.GradientTransformation, rng: jax.Array,
                       sample_images: jax.Array) -> TrainState:
    params, batch_stats, extra = method.init(rng, sample_images)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), extra=extra)


def make_train_step(method: Method, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """`(state, batch, rng) -> (state, metrics)`, jitted, per replica over the mesh's batch axis.

    State is replicated, the batch split. Gradients are those of the global mean loss: the
    per-replica loss is pmean-ed before differentiation, so every replica applies the same update.
    With `method.config.micro_batch_size` > 0 they come from `grad_cache` instead.
    """
    micro_batch_size = method.config.micro_batch_size

    def per_replica(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        check_batch(batch)
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(BATCH_AXIS))

        def global_loss(params):
            loss, aux = method.loss(params, state.batch_stats, state.extra, batch, rng, state.step)
            return lax.pmean(loss, BATCH_AXIS), aux

        if micro_batch_size:
            (loss, (batch_stats, metrics)), grads = grad_cache(
                method, state.params, state.batch_stats, batch, micro_batch_size)
            outputs = {}
        else:
            (loss, (batch_stats, metrics, outputs)), grads = jax.value_and_grad(
                global_loss, has_aux=True)(state.params)
        # Per-replica BN keeps per-device running statistics; averaging them gives one model to save.
        batch_stats = lax.pmean(batch_stats, BATCH_AXIS)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        new_state = new_state.replace(extra=method.after_update(new_state, outputs))
        metrics = lax.pmean(metrics, BATCH_AXIS)
        metrics.update(loss=loss, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(params))
        return new_state, metrics

    sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P()), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def _split_micro_batches(batch: Any, micro_batch_size: int) -> Any:
    return jax.tree.map(lambda x: x.reshape(-1, micro_batch_size, *x.shape[1:]), batch)


def _merge_micro_batches(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def grad_cache(method: Method, params: Any, batch_stats: Any, batch: dict,
               micro_batch_size: int) -> tuple[tuple[jax.Array, tuple[Any, dict]], Any]:
    """`value_and_grad` of the global mean loss over the whole batch, holding one micro-batch's activations.

    GradCache (Gao et al. 2021): embed every micro-batch without keeping activations, differentiate the
    loss of the whole batch (every negative) with respect to the embeddings, then back-propagate each
    micro-batch's share of that gradient through a recomputed forward pass, accumulating parameter
    gradients. The loss and gradients equal the full batch's except for BatchNorm, whose statistics
    are those of each micro-batch (over all replicas with global BN); the running statistics move by
    the mean of the micro-batches' statistics. Runs per replica inside the step's shard_map.
    """
    per_device = jax.tree.leaves(batch)[0].shape[0]
    parallel.check_micro_batch(micro_batch_size, per_device)
    micro_batches = _split_micro_batches(batch, micro_batch_size)
    embed = lambda p, micro_batch: method.embed(p, batch_stats, micro_batch)  # noqa: E731

    outputs, micro_stats = lax.map(lambda micro_batch: embed(params, micro_batch), micro_batches)

    def global_loss(outputs):
        loss, metrics = method.loss_from_embeddings(_merge_micro_batches(outputs), batch)
        return lax.pmean(loss, BATCH_AXIS), metrics

    (loss, metrics), output_grads = jax.value_and_grad(global_loss, has_aux=True)(outputs)

    # Per-replica gradients are summed once at the end, not all-reduced once per micro-batch.
    local_params = lax.pcast(params, BATCH_AXIS, to="varying")

    def accumulate(grads, micro_batch_and_grads):
        micro_batch, micro_output_grads = micro_batch_and_grads
        _, pullback = jax.vjp(lambda p: embed(p, micro_batch)[0], local_params)
        return jax.tree.map(jnp.add, grads, pullback(micro_output_grads)[0]), None

    grads, _ = lax.scan(accumulate, jax.tree.map(jnp.zeros_like, local_params), (micro_batches, output_grads))
    new_batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), micro_stats)
    return (loss, (new_batch_stats, metrics)), lax.psum(grads, BATCH_AXIS)
