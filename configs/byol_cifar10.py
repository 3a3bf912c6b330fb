"""BYOL on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/byol_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 4096 -> 256 and predictor 4096 -> 256 (BN on hidden layers only), tau 0.99 -> 1 by a
cosine, LARS 1.0 x B/256, weight decay 1e-5, batch 256, 1000 epochs, BYOL's asymmetric solarize (no
blur at 32 px). Target (published, not measured with sslx): linear eval top-1 92.58 (solo-learn's ResNet-18 BYOL,
1000 epochs).
"""
import ml_collections

from sslx.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.cache = True
    c.augment.preset = "cifar"
    c.model.name = "resnet18"
    c.model.cifar_stem = True
    # BYOL's asymmetric views (Grill et al. 2020, table 6).
    c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.4, 0.4, 0.2, 0.1
    c.augment.jitter_prob = 0.8
    c.augment.grayscale_prob = 0.2
    c.augment.view1 = ml_collections.ConfigDict({"blur_prob": 0.0, "solarize_prob": 0.0})
    c.augment.view2 = ml_collections.ConfigDict({"blur_prob": 0.0, "solarize_prob": 0.2})
    c.method = "byol"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 2, 4096, 256, False
    c.predictor.num_layers, c.predictor.hidden_dim = 2, 4096
    c.byol.tau_base = 0.99
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 1.0, 1e-5, 10.0
    return c
