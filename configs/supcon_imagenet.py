"""Supervised contrastive (SupCon) on ImageNet with a ResNet-50 (Khosla et al. 2020).

    sslx-pretrain --config configs/supcon_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Batch 6144, LARS 0.1 x B/256 (peak ~2.4), T 0.1, SimCLR's head 2048 -> 128 with BN (see
configs/supcon_cifar10.py for why), weight decay 1e-6, 700 epochs, SimCLR's augmentations (the paper's best
used AutoAugment, not here). Target (paper's
numbers, not measured with sslx): top-1 77-78.7%.
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""
from sslx.config import base_config, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.eval.batch_size = 1024
    c.method = "supcon"
    c.head.use_bn, c.head.num_layers, c.head.hidden_dim, c.head.out_dim = True, 2, 2048, 128
    c.loss.temperature = 0.1
    c.batch_size = 6144
    c.epochs = 700.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.1, 1e-6, 10.0
    return c
