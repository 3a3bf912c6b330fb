"""ResNet v1.5 encoders with SimCLRv2's width multiplier and selective kernels (SK).

Architecture (NHWC):
  * stem: `cifar_stem` is a 3x3/1 conv and no max-pool (for 32x32 inputs); otherwise a 7x7/2 conv and a 3x3/2
    max-pool, or, when `sk_ratio > 0`, SimCLRv2's ResNet-D deep stem (three 3x3 convs, the first strided) and max-pool.
  * blocks: ResNet v1.5, so a bottleneck strides on its 3x3 conv, not its first 1x1. The last BatchNorm of every
    residual branch starts with gamma = 0, so every block is the identity at init (Goyal et al. 2017); with
    `zero_init_residual=False` it starts at 1, for random features (the pretraining's random-init baseline).
  * selective kernels (`sk_ratio > 0`, SimCLRv2 after Li et al. 2019): the 3x3 conv+BN+ReLU of each block (the middle
    conv of a bottleneck, the first conv of a basic block) becomes two 3x3 conv branches (as SimCLRv2's released
    models do; SKNet's second branch is dilated), each with its own BN+ReLU. Their sum is global-average-pooled, squeezed by a
    1x1 conv to max(filters * sk_ratio, 32) channels, BN+ReLU, expanded to one logit per branch and channel, and a
    softmax over branches weights the sum of the branches. The strided shortcut projection becomes 2x2/2 average
    pooling followed by a 1x1/1 conv (ResNet-D), so it sees every pixel instead of one in four.
  * head: global average pool to [batch, 512 * width] (basic blocks) or [batch, 2048 * width] (bottlenecks), float32.

`tf_pooling` reproduces the two places where SimCLR's TensorFlow ResNet (google-research/simclr) pools differently,
so its checkpoints (sslx-import-simclr) compute the same function: the stem's 3x3/2 max-pool pads like TF's SAME
(the missing row and column after the input, not one before and one after), and with SK the stride-1 projection
shortcut (first block of stage 1) is also 2x2 average pooled, at stride 1 with SAME padding that the mean excludes.

Computation runs in `dtype`; parameters and BatchNorm statistics are always float32. Convolutions pad symmetrically,
as torchvision and SimCLRv2 do, rather than with XLA's lopsided SAME padding for strided convolutions.
"""
import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

# He et al. 2015 over fan_out (as torchvision's ResNets): keeps the variance of ReLU activations through each conv.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
SK_MIN_DIM = 32


def stage_filters(width: float, stage: int) -> int:
    """Channels of the 3x3 convs in 0-based `stage`: 64, 128, 256, 512 times the width multiplier."""
    return int(64 * 2**stage * width)


def conv(features: int, kernel: int, strides: int = 1, *, dtype: Any, name: str) -> nn.Conv:
    """Bias-free conv (a BatchNorm always follows) with symmetric padding that keeps size / strides."""
    return nn.Conv(features, (kernel, kernel), strides, padding=(kernel - 1) // 2, use_bias=False,
                   kernel_init=CONV_INIT, dtype=dtype, param_dtype=jnp.float32, name=name)


class SelectiveKernelConv(nn.Module):
    """Two 3x3 branches, each conv+BN+ReLU, mixed per channel by a softmax attention (SimCLRv2's SK)."""
    filters: int
    strides: int
    sk_ratio: float
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        branches = jnp.stack([
            nn.relu(self.norm(name=f"branch{i}_bn")(
                conv(self.filters, 3, self.strides, dtype=self.dtype, name=f"branch{i}_conv")(x)))
            for i in range(2)
        ], axis=-2)  # [batch, height, width, branch, channel]
        pooled = jnp.mean(branches.sum(axis=-2), axis=(1, 2), keepdims=True)
        squeezed = conv(max(int(self.filters * self.sk_ratio), SK_MIN_DIM), 1, dtype=self.dtype, name="squeeze")(pooled)
        squeezed = nn.relu(self.norm(name="squeeze_bn")(squeezed))
        logits = conv(2 * self.filters, 1, dtype=self.dtype, name="attention")(squeezed)
        attention = nn.softmax(logits.reshape(logits.shape[:-1] + (2, self.filters)).astype(jnp.float32), axis=-2)
        return jnp.sum(branches * attention.astype(self.dtype), axis=-2)


def conv3x3_bn_relu(x, filters: int, strides: int, sk_ratio: float, norm, dtype, name: str):
    """The block's 3x3 conv+BN+ReLU, or its selective-kernel replacement when sk_ratio > 0."""
    if sk_ratio > 0:
        return SelectiveKernelConv(filters, strides, sk_ratio, norm, dtype, name=f"{name}_sk")(x)
    return nn.relu(norm(name=f"{name}_bn")(conv(filters, 3, strides, dtype=dtype, name=f"{name}_conv")(x)))


def shortcut(x, features: int, strides: int, avg_down: bool, norm, dtype, tf_pooling: bool = False):
    """Identity where shapes match, else a 1x1 conv+BN projection (after 2x2 average pooling when avg_down)."""
    if x.shape[-1] == features and strides == 1:
        return x
    if avg_down and strides > 1:
        x = nn.avg_pool(x, (strides, strides), (strides, strides), padding="SAME")
        strides = 1
    elif avg_down and tf_pooling:
        x = nn.avg_pool(x, (2, 2), (1, 1), padding=((0, 1), (0, 1)), count_include_pad=False)
    return norm(name="proj_bn")(conv(features, 1, strides, dtype=dtype, name="proj_conv")(x))


def residual_scale_init(zero: bool) -> Callable:
    return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the first one strides."""
    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    sk_ratio: float = 0.0
    dtype: Any = jnp.float32
    tf_pooling: bool = False
    zero_init_residual: bool = True
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x):
        y = conv3x3_bn_relu(x, self.filters, self.strides, self.sk_ratio, self.norm, self.dtype, name="block1")
        y = conv(self.filters, 3, dtype=self.dtype, name="block2_conv")(y)
        y = self.norm(scale_init=residual_scale_init(self.zero_init_residual), name="block2_bn")(y)
        return nn.relu(y + shortcut(x, self.filters, self.strides, self.sk_ratio > 0, self.norm, self.dtype,
                                    self.tf_pooling))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand to 4x filters (ResNet-50 and deeper)."""
    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    sk_ratio: float = 0.0
    dtype: Any = jnp.float32
    tf_pooling: bool = False
    zero_init_residual: bool = True
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x):
        features = self.filters * self.expansion
        y = nn.relu(self.norm(name="block1_bn")(conv(self.filters, 1, dtype=self.dtype, name="block1_conv")(x)))
        y = conv3x3_bn_relu(y, self.filters, self.strides, self.sk_ratio, self.norm, self.dtype, name="block2")
        y = conv(features, 1, dtype=self.dtype, name="block3_conv")(y)
        y = self.norm(scale_init=residual_scale_init(self.zero_init_residual), name="block3_bn")(y)
        return nn.relu(y + shortcut(x, features, self.strides, self.sk_ratio > 0, self.norm, self.dtype,
                                    self.tf_pooling))


def stem(x, width: float, cifar: bool, deep: bool, norm, dtype, tf_pooling: bool = False):
    """Input convs: 3x3/1 for CIFAR; else 7x7/2 (or the ResNet-D 3x3 stack) then a 3x3/2 max-pool."""
    channels = stage_filters(width, 0)
    if cifar:
        return nn.relu(norm(name="stem_bn")(conv(channels, 3, dtype=dtype, name="stem_conv")(x)))
    if deep:
        x = nn.relu(norm(name="stem1_bn")(conv(channels // 2, 3, 2, dtype=dtype, name="stem1_conv")(x)))
        x = nn.relu(norm(name="stem2_bn")(conv(channels // 2, 3, dtype=dtype, name="stem2_conv")(x)))
        x = conv(channels, 3, dtype=dtype, name="stem_conv")(x)
    else:
        x = conv(channels, 7, 2, dtype=dtype, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    # TF's SAME pads an even side by one row after it only, an odd side by one on each side (as sslx does).
    pads = [(0, 1) if n % 2 == 0 else (1, 1) for n in x.shape[1:3]]
    return nn.max_pool(x, (3, 3), (2, 2), padding=pads if tf_pooling else ((1, 1), (1, 1)))


class ResNet(nn.Module):
    """ResNet encoder: images [batch, height, width, 3] -> pooled features [batch, feature_dim] in float32."""
    stage_sizes: Sequence[int]
    block: type[BasicBlock] | type[BottleneckBlock]
    width: float = 1.0
    cifar_stem: bool = False
    sk_ratio: float = 0.0
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    tf_pooling: bool = False   # pool as SimCLR's TF ResNet (see the module docstring)
    zero_init_residual: bool = True   # each residual branch's last BN scale starts at 0

    @property
    def feature_dim(self) -> int:
        return stage_filters(self.width, len(self.stage_sizes) - 1) * self.block.expansion

    def describe(self) -> dict[str, Any]:
        """The architecture for sslx-export's model.json."""
        block = "BasicBlock" if self.block.expansion == 1 else "BottleneckBlock"   # also under nn.remat
        return {"family": "resnet", "stage_sizes": list(self.stage_sizes), "block": block, "width": self.width,
                "cifar_stem": self.cifar_stem, "sk_ratio": self.sk_ratio,
                "version": "ResNet v1.5 (stride on the 3x3 conv); see sslx/models/resnet.py",
                "padding": "symmetric (kernel - 1) // 2", "batch_norm_epsilon": self.bn_epsilon,
                "feature_dim": self.feature_dim}

    @nn.compact
    def __call__(self, x, train: bool):
        # With axis_name set, BatchNorm averages its batch statistics over that mesh axis (global BN); it is only
        # consulted when train=True, so init with train=False works outside shard_map.
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, dtype=self.dtype,
                                 param_dtype=jnp.float32)
        x = stem(x.astype(self.dtype), self.width, self.cifar_stem, self.sk_ratio > 0, norm, self.dtype,
                 self.tf_pooling)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = self.block(stage_filters(self.width, stage), strides, norm, self.sk_ratio, self.dtype,
                               self.tf_pooling, self.zero_init_residual,
                               name=f"stage{stage + 1}_block{index + 1}")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


RESNETS = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock),
    "resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=BottleneckBlock),
    "resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=BottleneckBlock),
    "resnet200": functools.partial(ResNet, stage_sizes=(3, 24, 36, 3), block=BottleneckBlock),
}
