"""VICReg on ImageNet with a ResNet-50 (Bardes, Ponce & LeCun 2022).

    sslx-pretrain --config configs/vicreg_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 8192 (last without BN), lambda 25, mu 25, nu 1, batch 2048, LARS 0.2 x B/256,
weight decay 1e-6, 10 warm-up epochs, 1000 epochs, BYOL's views. Target: linear eval top-1 73.2%.
"""
import ml_collections

from sslx.config import base_config


def get_config():
    c = base_config()
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.augment.preset = "imagenet"
    c.model.name = "resnet50"
    c.model.cifar_stem = False
    c.model.dtype = "bfloat16"
    c.eval.batch_size = 1024
    # BYOL's asymmetric views (Grill et al. 2020, table 6).
    c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.4, 0.4, 0.2, 0.1
    c.augment.jitter_prob = 0.8
    c.augment.grayscale_prob = 0.2
    c.augment.view1 = ml_collections.ConfigDict({"blur_prob": 1.0, "solarize_prob": 0.0})
    c.augment.view2 = ml_collections.ConfigDict({"blur_prob": 0.1, "solarize_prob": 0.2})
    c.method = "vicreg"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 3, 8192, 8192, False
    c.vicreg.sim_coeff, c.vicreg.std_coeff, c.vicreg.cov_coeff = 25.0, 25.0, 1.0
    c.batch_size = 2048
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.2, 1e-6, 10.0
    return c
