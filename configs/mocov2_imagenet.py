"""MoCo v2 on ImageNet with a ResNet-50 (Chen et al. 2020, arXiv:2003.04297).

    sslx-pretrain --config configs/mocov2_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Queue 65536 x 128, momentum 0.999, T 0.2, MLP head 2048 -> 128 without BN, shuffle BN, SGD 0.03 x
B/256, weight decay 1e-4, momentum 0.9, batch 256, 800 epochs, blur 0.5. Target (paper's numbers, not
measured with sslx): linear eval top-1 71.1% at 800 epochs, 67.5 at 200.
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""
from sslx.config import base_config, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.eval.batch_size = 1024
    c.method = "mocov2"
    c.model.bn = "replica"
    c.moco.shuffle_bn = True
    c.moco.queue_size = 65536
    c.moco.momentum = 0.999
    c.head.use_bn, c.head.num_layers, c.head.hidden_dim, c.head.out_dim = False, 2, 2048, 128
    c.loss.temperature = 0.2
    c.augment.jitter_strength = 0.5     # MoCo v2: ColorJitter(0.4, 0.4, 0.4, 0.1)
    c.batch_size = 256
    c.epochs = 800.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "sgd", 0.03, 1e-4, 0.0
    return c
