"""MoCo v3 on ImageNet with a ResNet-50 (Chen, Xie & He 2021).

    sslx-pretrain --config configs/mocov3_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Batch 4096, LARS 0.6 x B/256 (the paper's lr=.6 at B 4096 is 9.6 -- here base 0.6 with linear
scaling), weight decay 1e-6, T 1.0, momentum 0.99 -> 1 by a cosine, projector 4096 -> 256,
predictor 4096 -> 256, BYOL's asymmetric views, 10 warm-up epochs. Target (paper's numbers, not
measured with sslx): linear eval top-1 68.9% at 100 epochs, 72.8% at 300, 74.6% at 1000.
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""

from sslx.config import base_config, use_byol_views, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.eval.batch_size = 1024
    use_byol_views(c.augment)
    c.method = "mocov3"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim = 3, 4096, 256
    c.predictor.num_layers, c.predictor.hidden_dim = 2, 4096
    c.moco.momentum = 0.99
    c.loss.temperature = 1.0
    c.batch_size = 4096
    c.epochs = 100.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.6, 1e-6, 10.0
    return c
