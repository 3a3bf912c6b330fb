"""Optimizers and learning-rate schedules (LARS, SGD, AdamW through optax)."""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


# Top-level parameter groups that are supervised heads: the online probe of pretraining.
SUPERVISED_HEADS = ("probe",)


def decay_mask(params: Any, exclude_norm_and_bias: bool = True) -> Any:
    """True for the weights that get weight decay.

    SimCLR, BYOL and DINO exclude normalisation parameters and biases: those are exactly the leaves of rank <= 1
    (BN/LayerNorm scale and offset, Dense/Conv bias), while every kernel has rank >= 2. SwAV's LARS decays every
    parameter (`exclude_norm_and_bias` False).
    """
    return jax.tree.map(lambda p: p.ndim > 1 or not exclude_norm_and_bias, params)


def trust_ratio_mask(params: Any, exclude_norm_and_bias: bool = True) -> Any:
    """True for the weights that get LARS's layer-wise trust ratio: `decay_mask` less the supervised heads.

    SimCLR's LARS skips decay and adaptation for 'head_supervised' and adds the decay of its kernel back
    as an L2 loss (add_weight_decay), whose gradient wd * w is the decay LARS would add: so the probe
    kernel is decayed but steps at the plain learning rate, which also lets a small-init probe move.
    """
    def adapted(path, p):
        top = getattr(path[0], "key", None) if path else None
        return (p.ndim > 1 or not exclude_norm_and_bias) and top not in SUPERVISED_HEADS

    return jax.tree_util.tree_map_with_path(adapted, params)


def peak_learning_rate(base_lr: float, global_batch: int, scaling: str) -> float:
    """SimCLR's scaling: linear = base x B / 256; sqrt = base x sqrt(B) (better for small B / long runs)."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise ValueError(f"config.optim.lr_scaling={scaling!r} is unknown; use one of {LR_SCALINGS}.")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, start_lr: float = 0.0,
                  end_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from `start_lr` to `peak_lr`, then cosine decay to `end_lr` at `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=start_lr, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=end_lr)


def cosine_between(start: float, end: float, total_steps: int) -> optax.Schedule:
    """`start` at step 0 to `end` at `total_steps` (and after) by a half cosine: DINO's weight-decay schedule."""
    def schedule(count):
        progress = jnp.clip(count / max(total_steps, 1), 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return schedule


def weight_decay_from_config(optim_cfg: Any, total_steps: int) -> optax.ScalarOrSchedule:
    """`weight_decay`, or with `weight_decay_end` >= 0 a cosine from it to that value over the run (DINO: 0.04 to
    0.4). Configs saved before the key lack it: constant."""
    end = optim_cfg.get("weight_decay_end", -1.0)
    if end < 0:
        return optim_cfg.weight_decay
    if total_steps <= 0:
        raise ValueError("config.optim.weight_decay_end >= 0 needs the run's length: pass total_steps to "
                         "sslx.optim.make_optimizer")
    return cosine_between(optim_cfg.weight_decay, end, total_steps)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in one pass over `num_examples` (at least one)."""
    return max(num_examples // batch_size, 1)


def run_steps(total_steps: int, epochs: float, per_epoch: int) -> int:
    """The run's length: `total_steps` where > 0, else `epochs` of `per_epoch` steps."""
    return total_steps if total_steps > 0 else math.ceil(epochs * per_epoch)


def schedule_from_config(optim_cfg, batch_size: int, total_steps: int, per_epoch: int) -> optax.Schedule:
    """The learning rate of a config.optim section: warm-up from `warmup_start_lr` over `warmup_steps` (>= 0) or
    else `warmup_epochs` of `per_epoch` steps, peaking at `base_lr` scaled by the global batch, then cosine decay to
    `end_lr` at `total_steps` (both unscaled, as DINO's min_lr and SwAV's start_warmup / final_lr; configs saved
    before those keys lack them: 0)."""
    warmup = (optim_cfg.warmup_steps if optim_cfg.warmup_steps >= 0
              else round(optim_cfg.warmup_epochs * per_epoch))
    peak = peak_learning_rate(optim_cfg.base_lr, batch_size, optim_cfg.lr_scaling)
    return warmup_cosine(peak, warmup, total_steps, start_lr=optim_cfg.get("warmup_start_lr", 0.0),
                         end_lr=optim_cfg.get("end_lr", 0.0))


class PeakHoldState(NamedTuple):
    count: jax.Array
    peak: jax.Array


def scale_by_held_peak(schedule: optax.Schedule) -> optax.GradientTransformation:
    """Multiplies updates by max_{s <= step} schedule(s): the warm-up, then the peak rate, never decayed."""

    def init(params):
        del params
        return PeakHoldState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        del params
        peak = jnp.maximum(state.peak, schedule(state.count))
        return jax.tree.map(lambda u: peak * u, updates), PeakHoldState(state.count + 1, peak)

    return optax.GradientTransformation(init, update)


def clip_each_tensor(max_norm: float) -> optax.GradientTransformation:
    """Scales each gradient tensor whose norm exceeds `max_norm` down to it (DINO's per-parameter clip_gradients,
    not optax.clip_by_global_norm's one norm over all of them)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6)), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim_cfg: Any, schedule: optax.Schedule, frozen: Mapping[str, int] | None = None,
                   total_steps: int = 0) -> optax.GradientTransformation:
    """The optimizer named by `optim_cfg.name` around a learning-rate schedule.

    Weight decay is `optim_cfg.weight_decay`, or a cosine to `weight_decay_end` over `total_steps`
    (`weight_decay_from_config`); with `grad_clip_per_tensor` > 0 each gradient tensor is first clipped to that
    norm; `exclude_norm_and_bias` (default) keeps rank-1 parameters out of weight decay and LARS's trust ratio.

    Top-level parameter groups named in `optim_cfg.constant_lr_modules` keep the peak rate after
    warm-up (SimSiam's predictor, sec. 4.2); the same rule (LARS/SGD/AdamW) runs with learning rate 1
    and is then scaled, as PyTorch SGD scales its momentum buffer by the rate.

    `frozen` maps parameter paths ('head/last_layer') to a number of steps during which those parameters stay
    unchanged and gather no optimizer state (DINO's last layer and SwAV's prototypes in the first epoch): their
    own copy of the rule starts afterwards from a fresh state at the schedule's rate of that step, as a PyTorch
    optimizer does for parameters whose gradients the reference code set to None.
    """
    clip = optim_cfg.get("grad_clip_per_tensor", 0.0)
    clipped = (lambda rule: optax.chain(clip_each_tensor(clip), rule)) if clip > 0 else (lambda rule: rule)
    decay = weight_decay_from_config(optim_cfg, total_steps)
    scheduled = _base_optimizer(optim_cfg, schedule, decay)
    held, frozen = tuple(optim_cfg.constant_lr_modules), dict(frozen or {})
    if not held and not frozen:
        return clipped(scheduled)
    transforms = {"scheduled": scheduled}
    if held:
        transforms["constant"] = optax.chain(_base_optimizer(optim_cfg, 1.0, decay), scale_by_held_peak(schedule))
    for prefix, steps in frozen.items():
        transforms[f"frozen:{prefix}"] = optax.transforms.conditionally_mask(
            _base_optimizer(optim_cfg, shifted(schedule, steps), shifted(decay, steps)),
            lambda count, steps=steps: count >= steps)

    def label(path, _):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        prefix = next((p for p in frozen if name == p or name.startswith(p + "/")), None)
        if prefix is not None:
            return f"frozen:{prefix}"
        return "constant" if name.split("/")[0] in held else "scheduled"

    return clipped(optax.multi_transform(transforms,
                                         lambda params: jax.tree_util.tree_map_with_path(label, params)))


def shifted(value: optax.ScalarOrSchedule, steps: int) -> optax.ScalarOrSchedule:
    """A schedule read `steps` later (a constant unchanged): the rates of a group whose updates start at `steps`."""
    return (lambda count: value(count + steps)) if callable(value) else value


def _base_optimizer(optim_cfg: Any, schedule: optax.ScalarOrSchedule,
                    weight_decay: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    name = optim_cfg.name
    exclude = optim_cfg.get("exclude_norm_and_bias", True)
    decayed = functools.partial(decay_mask, exclude_norm_and_bias=exclude)
    if name == "lars":
        return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decayed,
                          trust_coefficient=optim_cfg.lars_eta,
                          trust_ratio_mask=functools.partial(trust_ratio_mask, exclude_norm_and_bias=exclude),
                          momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=decayed),
                           optax.sgd(schedule, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov))
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=decayed)
    raise ValueError(f"config.optim.name={name!r} is unknown; use one of {OPTIMIZERS}.")
