"""The train state and the one pure, data-parallel pretraining step."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from sslx.methods.base import Method
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
    """

    def per_replica(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(BATCH_AXIS))

        def global_loss(params):
            loss, aux = method.loss(params, state.batch_stats, state.extra, batch, rng, state.step)
            return lax.pmean(loss, BATCH_AXIS), aux

        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(global_loss, has_aux=True)(state.params)
        # Per-replica BN keeps per-device running statistics; averaging them gives one model to save.
        batch_stats = lax.pmean(batch_stats, BATCH_AXIS)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        new_state = new_state.replace(extra=method.after_update(new_state))
        metrics = lax.pmean(metrics, BATCH_AXIS)
        metrics.update(loss=loss, learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads),
                       param_norm=optax.global_norm(params))
        return new_state, metrics

    sharded = jax.shard_map(per_replica, mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P()), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)
