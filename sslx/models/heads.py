"""Projection heads (SimCLR v1 and v2) and the linear classifier used by online probes and linear evaluation."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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
