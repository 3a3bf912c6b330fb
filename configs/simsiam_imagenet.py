"""SimSiam on ImageNet with a ResNet-50 (Chen & He 2021).

    sslx-pretrain --config configs/simsiam_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Batch 512, SGD 0.05 x B/256, weight decay 1e-4, momentum 0.9, predictor rate not decayed, projector
3 layers 2048 -> 2048, predictor 512 bottleneck, 100 epochs. Target (paper's number, not
measured with sslx): linear eval top-1 68.1%.
Views are made on the host (augment.on_device=False): by docs/scaling.md's "Host or device augmentation"
measurement (sslx-benchmark's feed line) a TPU v4 host's 240 vCPUs make 2x the 224 px views its
4 chips train on at an assumed 2,500 img/s each.
"""
from sslx.config import base_config, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.eval.batch_size = 1024
    c.method = "simsiam"
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim = 3, 2048, 2048
    c.predictor.num_layers, c.predictor.hidden_dim = 2, 512
    c.batch_size = 512
    c.epochs = 100.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "sgd", 0.05, 1e-4, 0.0
    c.optim.constant_lr_modules = ("predictor",)
    return c
