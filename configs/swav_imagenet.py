"""SwAV on ImageNet with a ResNet-50 (Caron et al. 2020): the reference's 800-epoch multi-crop run.

    sslx-pretrain --config configs/swav_imagenet.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Multi-crop 2x224 px (14-100% of the image) + 6x96 px (5-14%), SimCLR's ImageNet augmentation on every crop;
projection 2048-2048-128 (BN, ReLU), l2-normalised, 3000 prototypes renormalised after every update and frozen in
the first epoch; codes from 3 Sinkhorn-Knopp iterations at epsilon 0.05 over the global batch, temperature 0.1, no
queue at this batch size; global BN; LARS 0.3 x B/256 = 4.8 after 10 warm-up epochs from 0.3, down to 0.0048 by a
cosine, weight decay 1e-6 on every parameter (biases and BN too, as the reference's LARC), batch 4096, 800 epochs
(scripts/swav_800ep_pretrain.sh). Target (the paper's, not measured with sslx): linear eval top-1 75.3.
"""

from sslx.config import base_config, crop, use_imagenet_resnet50


def get_config():
    c = base_config()
    use_imagenet_resnet50(c)
    c.eval.batch_size = 1024
    c.method = "swav"
    c.augment.crops = (crop(2, 224, (0.14, 1.0)), crop(6, 96, (0.05, 0.14)))
    c.head.num_layers, c.head.hidden_dim, c.head.out_dim, c.head.final_bn = 2, 2048, 128, False
    c.swav.num_prototypes, c.swav.temperature, c.swav.epsilon, c.swav.sinkhorn_iterations = 3000, 0.1, 0.05, 3
    c.swav.queue_length = 0
    c.batch_size = 4096
    c.epochs = 800.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.3, 1e-6, 10.0
    c.optim.warmup_start_lr, c.optim.end_lr, c.optim.exclude_norm_and_bias = 0.3, 0.0048, False
    return c
