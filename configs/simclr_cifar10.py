"""SimCLR on CIFAR-10 with a ResNet-18 (CIFAR stem), the paper's CIFAR recipe (appendix B.9).

    sslx-pretrain --config configs/simclr_cifar10.py --workdir gs://BUCKET/simclr_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
    # or from TFRecords of JPEGs (image, label): --config.data.name=tfrecord --config.data.path=DIR

Batch 512, temperature 0.5, colour-jitter strength 0.5, no blur, LARS 1.0 x B/256, 1000 epochs.
Cost: the train step alone takes ~20 min for 1000 epochs on one H100 in bfloat16 (43,000 img/s at batch 1024,
`sslx-benchmark --skip-input --models resnet18_cifar:1024 --dtype bfloat16`); the input pipeline adds to that
and was not measured there (`sslx-benchmark` prints its views/s per CPU core).
Expected (published, not measured with sslx): linear eval top-1 90.74 for solo-learn's ResNet-18 SimCLR at
1000 epochs; SimCLR's paper reports 94.0 for ResNet-50 at batch 1024 (appendix B.9).
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
    c.head.version = "v1"
    c.head.out_dim = 128
    c.batch_size = 512
    c.epochs = 1000.0
    c.loss.temperature = 0.5
    c.optim.name = "lars"
    c.optim.base_lr = 1.0
    c.optim.lr_scaling = "linear"
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
