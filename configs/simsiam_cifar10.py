"""SimSiam on CIFAR-10 with a ResNet-18 (CIFAR stem), the paper's CIFAR recipe (appendix D).

    sslx-pretrain --config configs/simsiam_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 2048 -> 2048 (BN on all), predictor 512 bottleneck, SGD 0.03 x B/256 with the
predictor's rate not decayed, weight decay 5e-4, batch 512, 800 epochs. Target (paper's number, not
measured with sslx): linear top-1 91.8% (fig. D.1, ResNet-18 variant).
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
    c.method = "simsiam"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim = 3, 2048, 2048
    c.predictor.num_layers, c.predictor.hidden_dim = 2, 512
    c.batch_size = 512
    c.epochs = 800.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "sgd", 0.03, 5e-4, 0.0
    c.optim.constant_lr_modules = ("predictor",)
    return c
