"""MoCo v2 on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/mocov2_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Queue 4096 keys of dim 128, momentum 0.99, T 0.2, MLP head 512 -> 128 without BN, shuffle BN, SGD
0.06 x B/256, weight decay 5e-4, batch 256, 800 epochs. Target (published, not
measured with sslx): linear eval top-1 92.9 (solo-learn's ResNet-18 MoCo v2+, 1000 epochs).
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
    c.method = "mocov2"
    c.model.bn = "replica"
    c.moco.shuffle_bn = True
    c.moco.queue_size = 4096
    c.moco.momentum = 0.99
    c.head.use_bn, c.head.num_layers, c.head.hidden_dim, c.head.out_dim = False, 2, 512, 128
    c.loss.temperature = 0.2
    c.batch_size = 256
    c.epochs = 800.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "sgd", 0.06, 5e-4, 0.0
    return c
