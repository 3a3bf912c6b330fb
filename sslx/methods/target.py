"""Momentum (EMA) target networks, shared by BYOL and MoCo v2/v3.

The target is the online encoder + projector with parameters xi <- tau xi + (1 - tau) theta after
every update, carried in `state.extra['target_params']`. It runs in train mode on the batch, so its
BN statistics are its own: the loss hands them to `after_update` through its outputs, which
averages them over replicas into `state.extra['target_batch_stats']`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sslx.methods.base import Method, SSLNetwork
from sslx.models import build_encoder, build_head, network_variables, stats_of
from sslx.parallel import BATCH_AXIS

TARGET_MODULES = ("encoder", "head")   # what the target copies from the online network (no predictor, no probe)


def cosine_momentum(step: jax.Array, total_steps: int, base: float) -> jax.Array:
    """BYOL (Grill et al. 2020, sec. 3.2): tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(target: Any, online: Any, tau: jax.Array) -> Any:
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)


def target_part(tree: dict) -> dict:
    return {k: tree[k] for k in TARGET_MODULES if k in tree}


def _copy(tree: Any) -> Any:
    # Own buffers: the step donates the state, and a leaf shared with params would be donated twice.
    return jax.tree.map(jnp.copy, tree)


class MomentumTargetMethod(Method):
    """An online network (with a predictor where `has_predictor`) and its EMA target."""

    def momentum(self, step: jax.Array) -> jax.Array:
        """tau for the update after optimizer step `step` (0-based)."""
        raise NotImplementedError

    def target_network(self, axis_name: str | None) -> nn.Module:
        return SSLNetwork(encoder=build_encoder(self.config.model, axis_name), head=build_head(self.config, axis_name))

    def init_extra(self, variables: Any) -> Any:
        return {"target_params": _copy(target_part(variables["params"])),
                "target_batch_stats": _copy(target_part(variables.get("batch_stats", {})))}

    def target_forward(self, extra: Any, target_stats: Any, images: jax.Array) -> tuple[jax.Array, Any]:
        """Target projection z' (no gradient) and the target's updated BN statistics."""
        out, updates = self.target_network(BATCH_AXIS).apply(
            network_variables(extra["target_params"], target_stats), images, train=True, mutable=["batch_stats"])
        return lax.stop_gradient(out["z"]), stats_of(updates)

    def after_update(self, state: Any, outputs: Any) -> Any:
        """EMA of the updated online params; the target's BN statistics from `outputs`, averaged over replicas."""
        tau = self.momentum(state.step - 1)
        target = ema_update(state.extra["target_params"], target_part(state.params), tau)
        stats = lax.pmean(outputs["target_batch_stats"], BATCH_AXIS)
        return {**state.extra, "target_params": target, "target_batch_stats": stats}
