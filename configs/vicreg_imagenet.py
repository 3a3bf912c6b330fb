"""VICReg on ImageNet with a ResNet-50 (Bardes, Ponce & LeCun 2022).

    sslx-pretrain --config configs/vicreg_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Projector 3 layers 8192 (last without BN), lambda 25, mu 25, nu 1, batch 2048, LARS 0.2 x B/256,
weight decay 1e-6, 10 warm-up epochs, 1000 epochs, BYOL's views. Target (paper's number, not
measured with sslx): linear eval top-1 73.2%.
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
    c.method = "vicreg"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 3, 8192, 8192, False
    c.vicreg.sim_coeff, c.vicreg.std_coeff, c.vicreg.cov_coeff = 25.0, 25.0, 1.0
    c.batch_size = 2048
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.2, 1e-6, 10.0
    return c
