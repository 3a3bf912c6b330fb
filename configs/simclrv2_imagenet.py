"""SimCLR v2 on ImageNet (Chen et al. 2020b): 3-layer projection head, deeper/wider/SK encoders.

    sslx-pretrain --config configs/simclrv2_imagenet.py --workdir gs://BUCKET/simclrv2_r50 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    # the paper's largest: --config.model.name=resnet152 --config.model.width=3 --config.model.sk_ratio=0.0625

Batch 4096, LARS 0.3 x B/256, weight decay 1e-4, temperature 0.1, 800 epochs, 3-layer head (BN on every
layer), global BN. Fine-tuning later starts from the first head layer.
Cost: R50 1x 800 epochs ~12 h on a TPU v3-128 slice.
Expected linear eval top-1 (paper's numbers, table 1; not measured with sslx): R50 1x 71.7, R50 1x+SK 74.6,
R152 3x+SK 79.8.
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""
from sslx.config import base_config, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.model.sk_ratio = 0.0
    c.head.version = "v2"
    c.head.num_layers = 3
    c.head.out_dim = 128
    c.batch_size = 4096
    c.epochs = 800.0
    c.loss.temperature = 0.1
    c.optim.name = "lars"
    c.optim.base_lr = 0.3
    c.optim.lr_scaling = "linear"
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 10.0
    c.eval.batch_size = 1024
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2500
    return c
