"""Networks from config sections: `build_encoder(config.model, axis_name)` and the heads on top of it.

Every backbone family reads only its own keys of config.model, besides the shared `name`, `dtype` and `remat`:
ResNets `width`, `cifar_stem`, `sk_ratio`, `bn`, `bn_momentum`, `tf_pooling`, `zero_init_residual`; ViTs the
`vit` section (each field <= 0 takes the named variant's value). `bn` and `bn_momentum` also set the heads'
BatchNorm. `axis_name` is the replica axis inside the data-parallel step (None outside it): global BatchNorm
averages its statistics over it.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from sslx.models.heads import ProjectionHead, make_head
from sslx.models.resnet import RESNETS
from sslx.models.vit import VIT_FIELDS, VITS, ViT

Builder = Callable[[ml_collections.ConfigDict, "str | None"], nn.Module]


def compute_dtype(model_cfg: ml_collections.ConfigDict):
    return jnp.bfloat16 if model_cfg.dtype == "bfloat16" else jnp.float32


def bn_axis(model_cfg: ml_collections.ConfigDict, axis_name: str | None) -> str | None:
    """Global BN reduces statistics over the replica axis; per-replica BN does not."""
    return axis_name if model_cfg.bn == "global" else None


def remat_blocks(encoder: nn.Module, model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """With config.model.remat only each block's input is kept for the backward pass, which recomputes the
    block's insides: for about one more forward pass. Configs saved before the key lack it."""
    return encoder.clone(block=nn.remat(encoder.block)) if model_cfg.get("remat", False) else encoder


def resnet_builder(name: str) -> Builder:
    def build(model_cfg: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
        return remat_blocks(RESNETS[name](
            width=model_cfg.width, cifar_stem=model_cfg.cifar_stem, sk_ratio=model_cfg.sk_ratio,
            bn_axis_name=bn_axis(model_cfg, axis_name), bn_momentum=model_cfg.bn_momentum,
            dtype=compute_dtype(model_cfg), tf_pooling=model_cfg.get("tf_pooling", False),
            zero_init_residual=model_cfg.get("zero_init_residual", True)), model_cfg)
    return build


def vit_fields(name: str, model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """The variant's (patch_size, hidden_dim, ...) with the positive fields of config.model.vit instead."""
    overrides = model_cfg.get("vit") or {}
    fields = {key: overrides.get(key, -1) if overrides.get(key, -1) > 0 else default
              for key, default in zip(VIT_FIELDS, VITS[name])}
    if fields["hidden_dim"] % fields["num_heads"]:
        raise ValueError(f"the ViT's hidden_dim {fields['hidden_dim']} is not a multiple of its num_heads "
                         f"{fields['num_heads']}: change config.model.vit.hidden_dim or config.model.vit.num_heads")
    if fields["image_size"] % fields["patch_size"]:
        raise ValueError(f"the ViT's position-embedding size {fields['image_size']} px is not a multiple of its "
                         f"{fields['patch_size']} px patches: change config.model.vit.image_size or patch_size")
    return fields


def drop_path_rate(model_cfg: ml_collections.ConfigDict) -> float:
    """config.model.vit.drop_path_rate, in [0, 1) (configs saved before the key lack it: 0)."""
    rate = (model_cfg.get("vit") or {}).get("drop_path_rate", 0.0)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"config.model.vit.drop_path_rate={rate} must be in [0, 1) (DINO's ViT-S/16: 0.1; 0: off)")
    return rate


def vit_builder(name: str) -> Builder:
    def build(model_cfg: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
        del axis_name   # LayerNorm only: nothing is reduced over replicas
        return remat_blocks(ViT(**vit_fields(name, model_cfg), dtype=compute_dtype(model_cfg),
                                drop_path_rate=drop_path_rate(model_cfg)), model_cfg)
    return build


ENCODERS: dict[str, Builder] = {**{name: resnet_builder(name) for name in RESNETS},
                                **{name: vit_builder(name) for name in VITS}}


def build_encoder(model_cfg: ml_collections.ConfigDict, axis_name: str | None = None) -> nn.Module:
    """The encoder config.model describes: images [batch, H, W, 3] -> features [batch, feature_dim] (float32)."""
    if model_cfg.name not in ENCODERS:
        raise ValueError(f"unknown config.model.name {model_cfg.name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[model_cfg.name](model_cfg, axis_name)


def feature_dim(model_cfg: ml_collections.ConfigDict) -> int:
    """Width of the encoder's features (512 * width for resnet18/34, 2048 * width deeper, hidden_dim for ViTs)."""
    return build_encoder(model_cfg).feature_dim


def build_head(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """The projection head config.head describes (SimCLR v1/v2 depths, BN or not)."""
    head_cfg = config.head
    head = make_head(
        head_cfg.version, hidden_dim=head_cfg.hidden_dim if head_cfg.hidden_dim > 0 else None,
        out_dim=head_cfg.out_dim, use_bn=head_cfg.use_bn,
        # Without BN the last layer keeps its bias (MoCo v2 and SupCon's Dense-ReLU-Dense).
        final_bn=head_cfg.use_bn and head_cfg.final_bn,
        bn_axis_name=bn_axis(config.model, axis_name), bn_momentum=config.model.bn_momentum,
        dtype=compute_dtype(config.model))
    return head.clone(num_layers=head_cfg.num_layers) if head_cfg.num_layers > 0 else head


def build_predictor(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """BYOL's predictor q: an MLP from the projection back to its own width, BN on hidden layers only."""
    pred_cfg = config.predictor
    return ProjectionHead(
        num_layers=pred_cfg.num_layers, hidden_dim=pred_cfg.hidden_dim if pred_cfg.hidden_dim > 0 else None,
        out_dim=config.head.out_dim, final_bn=False, bn_axis_name=bn_axis(config.model, axis_name),
        bn_momentum=config.model.bn_momentum, dtype=compute_dtype(config.model))


def network_variables(params: Any, batch_stats: Any, part: str | None = None) -> dict[str, Any]:
    """Flax variables {'params', 'batch_stats'} of a network, or of its submodule `part` ('encoder', 'head').

    `batch_stats` is left out where there is none: a network without BatchNorm (a ViT encoder) has no such
    collection, and `batch_stats[part]` would raise.
    """
    if part is not None:
        params, batch_stats = params[part], (batch_stats or {}).get(part, {})
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def stats_of(updates: Any) -> Any:
    """The updated BatchNorm statistics from `apply(..., mutable=['batch_stats'])`; {} for a network without BN."""
    return updates.get("batch_stats", {})
