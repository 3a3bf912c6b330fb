"""Projection heads (SimCLR v1 and v2, DINO's) and the linear classifier used by online probes and linear
evaluation."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from sslx.losses import l2_normalize

HEAD_DEPTHS = {"v1": 2, "v2": 3}


class ProjectionHead(nn.Module):
    """SimCLR's MLP projection g(h): `num_layers` layers of Dense (no bias) -> BatchNorm.

    Non-final layers have a learned offset (the BN beta, or the Dense bias when use_bn=False) and a ReLU; the final
    layer has neither, as in the SimCLR reference code. SimCLR v1 uses 2 layers, v2 uses 3 (see `make_head`).
    With final_bn=False the final layer is a Dense with bias and no BN: the projectors and predictors of BYOL,
    SimSiam's predictor, MoCo v2, Barlow Twins and VICReg.
    Returns (z, hiddens) with hiddens = [input, layer 1 output, ..., z], so SimCLRv2 fine-tuning can keep the encoder
    plus the first head layers. Outputs are float32.
    """
    num_layers: int = 3
    hidden_dim: int | None = None  # None: the width of the input features.
    out_dim: int = 128
    use_bn: bool = True
    final_bn: bool = True   # False: the final layer is Dense with bias, no BN
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        hidden_dim = self.hidden_dim or x.shape[-1]
        hiddens = [x.astype(jnp.float32)]
        h = x.astype(self.dtype)
        for layer in range(self.num_layers):
            final = layer == self.num_layers - 1
            bias = not self.final_bn if final else not self.use_bn
            h = nn.Dense(self.out_dim if final else hidden_dim, use_bias=bias, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"dense{layer}")(h)
            if self.use_bn and (self.final_bn or not final):
                h = nn.BatchNorm(use_running_average=not train, use_bias=not final, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, dtype=self.dtype,
                                 param_dtype=jnp.float32, name=f"bn{layer}")(h)
            if not final:
                h = nn.relu(h)
            hiddens.append(h.astype(jnp.float32))
        return hiddens[-1], hiddens


def make_head(version: str, **fields) -> ProjectionHead:
    """The projection head of SimCLR `version` ('v1': 2 layers, 'v2': 3); fields are other ProjectionHead fields."""
    if version not in HEAD_DEPTHS:
        raise ValueError(f"config.head.version must be one of {sorted(HEAD_DEPTHS)}, got {version!r}")
    return ProjectionHead(num_layers=HEAD_DEPTHS[version], **fields)


class LinearClassifier(nn.Module):
    """A linear layer to `num_classes` logits (float32), for online probes and linear evaluation."""
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        # Small (not zero) kernel as in SimCLR: logits start near uniform, and LARS's trust ratio, which scales
        # each step by the kernel's norm, can still move it (a zero kernel would stay near zero).
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                          param_dtype=jnp.float32)(x.astype(self.dtype))
        return logits.astype(jnp.float32)


class WeightNormDense(nn.Module):
    """A bias-free Dense whose kernel is a direction times a scale: w[:, k] = g[k] v[:, k] / ||v[:, k]|| (weight
    normalisation, Salimans & Kingma 2016), so each output unit's weight vector has norm g[k]. With
    `learn_scale=False` g stays 1 (DINO's `norm_last_layer=True`): every output is a cosine-like projection
    whose size the optimizer cannot grow, which DINO found to stabilise training with large output dims."""
    features: int
    learn_scale: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        direction = self.param("kernel", nn.initializers.truncated_normal(0.02), (x.shape[-1], self.features),
                               jnp.float32)
        kernel = direction * lax.rsqrt(jnp.maximum(jnp.sum(direction * direction, axis=0, keepdims=True), 1e-24))
        if self.learn_scale:
            kernel = kernel * self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        return x.astype(self.dtype) @ kernel.astype(self.dtype)


class DinoHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and appendix): an MLP of `num_layers` Dense layers
    (GELU between them, optional BatchNorm) down to a `bottleneck_dim` bottleneck, l2-normalised, then a
    weight-normalised Dense to `out_dim` (65,536 in DINO) with its scale frozen at 1 by default.

    Returns (logits, hiddens) as ProjectionHead does: hiddens = [input, MLP layer outputs..., normalised
    bottleneck, logits], float32. Dense kernels start from a normal of std 0.02 truncated at two std, biases at 0.
    """
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    learn_last_scale: bool = False   # DINO's norm_last_layer=False
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        hiddens = [x.astype(jnp.float32)]
        h = x.astype(self.dtype)
        for layer in range(self.num_layers):
            final = layer == self.num_layers - 1
            h = nn.Dense(self.bottleneck_dim if final else self.hidden_dim,
                         kernel_init=nn.initializers.truncated_normal(0.02), dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"dense{layer}")(h)
            if not final:
                if self.use_bn:
                    h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                     axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=f"bn{layer}")(h)
                h = nn.gelu(h, approximate=False)
            hiddens.append(h.astype(jnp.float32))
        bottleneck = l2_normalize(h.astype(jnp.float32))
        hiddens.append(bottleneck)
        logits = WeightNormDense(self.out_dim, self.learn_last_scale, self.dtype, name="last_layer")(bottleneck)
        hiddens.append(logits.astype(jnp.float32))
        return hiddens[-1], hiddens
