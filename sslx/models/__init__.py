"""Encoders by name (`config.model.name`), the heads trained on top of them, and their builders from config."""
from sslx.models.builders import (ENCODERS, bn_axis, build_encoder, build_head, build_predictor, compute_dtype,
                                  drop_path_rate, feature_dim, network_variables, stats_of)
from sslx.models.heads import DinoHead, LinearClassifier, ProjectionHead, WeightNormDense, make_head
from sslx.models.resnet import RESNETS, BasicBlock, BottleneckBlock, ResNet
from sslx.models.vit import VITS, ViT

__all__ = ["ENCODERS", "RESNETS", "VITS", "BasicBlock", "BottleneckBlock", "DinoHead", "LinearClassifier",
           "ProjectionHead", "ResNet", "ViT", "WeightNormDense", "bn_axis", "build_encoder", "build_head",
           "build_predictor", "compute_dtype", "drop_path_rate", "feature_dim", "make_head", "network_variables",
           "stats_of"]
