"""Optimizers and learning-rate schedules (LARS, SGD, AdamW through optax)."""
from __future__ import annotations

import math
from typing import Any

import jax
import optax

OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay and LARS adaptation.

    SimCLR excludes BatchNorm parameters and biases: those are exactly the leaves of rank <= 1
    (BN scale/offset, Dense/Conv bias), while every kernel has rank >= 2.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def peak_learning_rate(base_lr: float, global_batch: int, scaling: str) -> float:
    """SimCLR's scaling: linear = base x B / 256; sqrt = base x sqrt(B) (better for small B / long runs)."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise ValueError(f"config.optim.lr_scaling={scaling!r} is unknown; use one of {LR_SCALINGS}.")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def make_optimizer(optim_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Builds the optimizer named by `optim_cfg.name` around a learning-rate schedule."""
    name = optim_cfg.name
    if name == "lars":
        return optax.lars(schedule, weight_decay=optim_cfg.weight_decay, weight_decay_mask=decay_mask,
                          trust_coefficient=optim_cfg.lars_eta, trust_ratio_mask=decay_mask,
                          momentum=optim_cfg.momentum)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov))
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, mask=decay_mask)
    raise ValueError(f"config.optim.name={name!r} is unknown; use one of {OPTIMIZERS}.")
