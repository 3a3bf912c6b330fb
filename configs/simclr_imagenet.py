"""SimCLR v1 on ImageNet with a ResNet-50 (Chen et al. 2020a).

    sslx-pretrain --config configs/simclr_imagenet.py --workdir gs://BUCKET/simclr_r50 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets [--config.epochs=1000]

Batch 4096, LARS with LR 0.3 x B/256 = 4.8, weight decay 1e-6, temperature 0.1, 10 warm-up epochs,
cosine decay, global BN, colour-jitter strength 1.0 with blur, 2-layer projection head (2048 -> 128).
Cost: 100 epochs ~1.5 h on 128 TPU v3 cores (the paper's figure); ~9 h on a TPU v4-32.
Expected (paper's numbers, not measured with sslx): linear eval top-1 69.3% at 1000 epochs
(table 6).
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""
from sslx.config import base_config, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.head.version = "v1"
    c.head.out_dim = 128
    c.batch_size = 4096
    c.epochs = 100.0
    c.loss.temperature = 0.1
    c.optim.name = "lars"
    c.optim.base_lr = 0.3
    c.optim.lr_scaling = "linear"
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.eval.batch_size = 1024
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2500
    return c
