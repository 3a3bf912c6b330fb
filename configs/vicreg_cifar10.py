"""VICReg on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/vicreg_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 2048 (last without BN), lambda 25, mu 25, nu 1, LARS 0.3 x B/256, weight decay
1e-4, batch 256, 1000 epochs. Target (published, not measured with sslx): linear eval top-1 92.1
(solo-learn's ResNet-18 VICReg, 1000 epochs).
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
    c.method = "vicreg"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 3, 2048, 2048, False
    c.vicreg.sim_coeff, c.vicreg.std_coeff, c.vicreg.cov_coeff = 25.0, 25.0, 1.0
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.3, 1e-4, 10.0
    return c
