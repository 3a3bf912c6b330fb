"""SwAV on CIFAR-10 with a ResNet-18 (CIFAR stem), multi-crop at CIFAR's scale and the feature queue.

    sslx-pretrain --config configs/swav_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Multi-crop 2x32 px (14-100% of the image) + 6x16 px (5-14%), SimCLR's CIFAR augmentation on every crop; projection
2048-2048-128, 3000 prototypes frozen in the first epoch; at batch 256 a queue of 3840 earlier projections of the
global crops joins the assignment from epoch 15 (SwAV's small-batch setting, scripts/swav_200ep_bs256_pretrain.sh);
LARS 0.6 x B/256 down to 0.0006 by a cosine (that script's final_lr), weight decay 1e-6 on every parameter, 1000
epochs. These CIFAR settings are sslx's choice (the SwAV paper has no
CIFAR-10 recipe). Target (published, not measured with sslx): solo-learn's SwAV ResNet-18 reaches 89.17 online
linear top-1 on CIFAR-10 after 1000 epochs with its own recipe.
"""

from sslx.config import base_config, crop


def get_config():
    c = base_config()
    c.method = "swav"
    c.data.name, c.data.image_size, c.data.cache = "cifar10", 32, True
    c.augment.preset = "cifar"
    c.augment.crops = (crop(2, 32, (0.14, 1.0)), crop(6, 16, (0.05, 0.14)))
    c.model.name, c.model.cifar_stem = "resnet18", True
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 2, 2048, 128, False
    c.swav.queue_length, c.swav.queue_start_epoch = 3840, 15.0
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.6, 1e-6, 10.0
    c.optim.end_lr, c.optim.exclude_norm_and_bias = 0.0006, False
    return c
