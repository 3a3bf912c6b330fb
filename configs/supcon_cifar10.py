"""Supervised contrastive (SupCon) on CIFAR-10 with a ResNet-18 (CIFAR stem).

    sslx-pretrain --config configs/supcon_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

SimCLR's head Dense-BN-ReLU-Dense-BN 512 -> 128, T 0.1, SGD 0.125 x B/256 (0.5 at batch 1024, as the authors'
code) with momentum 0.9, weight decay 1e-4, batch 1024, 1000 epochs. The authors' head has no BN (their TF
code offers it): at T 0.1 the collapsed state's loss, log(2N-1) (4.84 at batch 64), is below that of spread-out
embeddings early on (7.9 at step 10 with this head), and a head without BN falls into it within 10 steps of a
short run (z_std 0.004); BN on the output rules that state out.
Target (paper's number, not measured with sslx): Khosla et al. report 96.0 top-1 for ResNet-50.
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
    c.method = "supcon"
    c.head.use_bn, c.head.num_layers, c.head.hidden_dim, c.head.out_dim = True, 2, 512, 128
    c.loss.temperature = 0.1
    c.batch_size = 1024
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "sgd", 0.125, 1e-4, 10.0
    return c
