"""The train state, the one data-parallel step factory every stage builds its update from, and the pretraining step."""
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


def new_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation, extra: Any = None) -> TrainState:
    """The state at step 0 of a network's variables, with the optimizer's initial state."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), extra={} if extra is None else extra)


def create_train_state(method: Method, optimizer: optax.GradientTransformation, rng: jax.Array,
                       sample_images: jax.Array) -> TrainState:
    params, batch_stats, extra = method.init(rng, sample_images)
    return new_state(params, batch_stats, optimizer, extra)


# loss_fn(params, state, batch, *inputs) -> (per-replica loss, (batch_stats, metrics, outputs)): the loss of this
# replica's share of the batch, the network's updated BN statistics, per-replica metrics (averaged over replicas),
# and what `after_update` reads.
LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict, Any]]]


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh, *,
              schedule: optax.Schedule | None = None, num_inputs: int = 0,
              after_update: Callable[[TrainState, Any], Any] | None = None,
              gradients: Callable[..., tuple[tuple[jax.Array, tuple[Any, dict, Any]], Any]] | None = None,
              ) -> Callable[..., tuple[TrainState, dict]]:
    """`(state, batch, *inputs) -> (state, metrics)`, jitted, per replica over the mesh's batch axis: the update of
    every stage (pretraining, fine-tuning, distillation, linear eval), which differ only in `loss_fn`.

    State and the `num_inputs` extra inputs (an rng, frozen teacher or encoder variables) are replicated, the batch
    split. Gradients are those of the global mean loss: the per-replica loss is pmean-ed before differentiation,
    so every replica applies the same update; `gradients(state, batch, *inputs)` replaces that (GradCache). BN
    statistics are averaged over replicas (per-replica BN keeps per-device ones: their mean is the one model to
    save). `after_update(new_state, outputs)` gives the new `extra` (EMA targets, queues). Metrics: the replica
    mean of loss_fn's, plus loss, grad and param norms and the learning rate of the step.
    """

    def value_and_grad(state: TrainState, batch: dict, *inputs):
        def global_loss(params):
            loss, aux = loss_fn(params, state, batch, *inputs)
            return lax.pmean(loss, BATCH_AXIS), aux
        return jax.value_and_grad(global_loss, has_aux=True)(state.params)

    def per_replica(state: TrainState, batch: dict, *inputs) -> tuple[TrainState, dict]:
        (loss, (batch_stats, metrics, outputs)), grads = (gradients or value_and_grad)(state, batch, *inputs)
        batch_stats = lax.pmean(batch_stats, BATCH_AXIS)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        if after_update is not None:
            new_state = new_state.replace(extra=after_update(new_state, outputs))
        metrics = lax.pmean(metrics, BATCH_AXIS)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    in_specs = (P(), P(BATCH_AXIS)) + (P(),) * num_inputs
    sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def make_train_step(method: Method, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pretraining step `(state, batch, rng) -> (state, metrics)` of `method` (see `make_step`).

    Per-step randomness is the rng folded with the step and the replica index. With
    `method.config.micro_batch_size` > 0 the gradients come from `grad_cache`.
    """
    micro_batch_size = method.config.micro_batch_size

    def loss_fn(params: Any, state: TrainState, batch: dict, rng: jax.Array):
        check_batch(batch)
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(BATCH_AXIS))
        return method.loss(params, state.batch_stats, state.extra, batch, rng, state.step)

    def micro_batched(state: TrainState, batch: dict, rng: jax.Array):
        del rng
        check_batch(batch)
        return grad_cache(method, state.params, state.batch_stats, batch, micro_batch_size)

    return make_step(loss_fn, optimizer, mesh, schedule=schedule, num_inputs=1, after_update=method.after_update,
                     gradients=micro_batched if micro_batch_size else None)


def _split_micro_batches(batch: Any, micro_batch_size: int) -> Any:
    return jax.tree.map(lambda x: x.reshape(-1, micro_batch_size, *x.shape[1:]), batch)


def _merge_micro_batches(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def grad_cache(method: Method, params: Any, batch_stats: Any, batch: dict,
               micro_batch_size: int) -> tuple[tuple[jax.Array, tuple[Any, dict, dict]], Any]:
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
    return (loss, (new_batch_stats, metrics, {})), lax.psum(grads, BATCH_AXIS)
