"""Barlow Twins on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/barlow_twins_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 2048 (last without BN), lambda 5e-3 (the paper's ~1/d scaling suggests 0.0051 at
d 2048 too), LARS 0.3 x B/256, weight decay 1e-4, batch 256, 1000 epochs. Target (published, not
measured with sslx): linear eval top-1 92.1 (solo-learn's ResNet-18 Barlow Twins, 1000 epochs).
"""
from sslx.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.cache = True
    c.augment.preset = "cifar"
    c.model.name = "resnet18"
    c.model.cifar_stem = True
    c.method = "barlow_twins"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 3, 2048, 2048, False
    c.barlow_twins.lambda_offdiag = 5e-3
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.3, 1e-4, 10.0
    return c
