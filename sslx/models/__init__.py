"""Encoders by name (`config.model.name`) and the heads trained on top of them."""
import functools

from sslx.models.heads import LinearClassifier, ProjectionHead, make_head
from sslx.models.resnet import BasicBlock, BottleneckBlock, ResNet

ENCODERS = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock),
    "resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=BottleneckBlock),
    "resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=BottleneckBlock),
    "resnet200": functools.partial(ResNet, stage_sizes=(3, 24, 36, 3), block=BottleneckBlock),
}


def build_encoder(name: str, **kwargs) -> ResNet:
    """The encoder `name` with ResNet fields `kwargs` (width, cifar_stem, sk_ratio, bn_axis_name, dtype, ...)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown config.model.name {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name](**kwargs)


def feature_dim(name: str, width: float = 1.0) -> int:
    """Width of the encoder's pooled features: 512 * width for resnet18/34, 2048 * width for deeper ones."""
    return build_encoder(name, width=width).feature_dim


__all__ = ["ENCODERS", "BasicBlock", "BottleneckBlock", "LinearClassifier", "ProjectionHead", "ResNet",
           "build_encoder", "feature_dim", "make_head"]
