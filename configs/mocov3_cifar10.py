"""MoCo v3 on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/mocov3_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 4096 -> 256 (BN on all), predictor 4096 -> 256, momentum 0.99 -> 1 by a cosine,
loss x 2T with T 0.2, LARS 0.3 x B/256, weight decay 1e-6, batch 256, 1000 epochs. Target (published,
not measured with sslx): linear eval top-1 93.1 (solo-learn's ResNet-18 MoCo v3, 1000 epochs).
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
    c.method = "mocov3"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim = 3, 4096, 256
    c.predictor.num_layers, c.predictor.hidden_dim = 2, 4096
    c.moco.momentum = 0.99
    c.loss.temperature = 0.2
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.3, 1e-6, 10.0
    return c
