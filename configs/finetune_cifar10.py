"""Semi-supervised fine-tuning on CIFAR-10 from a pretrained encoder, on a class-balanced fraction of labels.

    sslx-finetune --config configs/finetune_cifar10.py --workdir /tmp/finetune_cifar10 \
        --config.pretrained=PRETRAIN_WORKDIR --config.finetune.label_fraction=0.1

The subset (seed config.finetune.subset_seed) is written to WORKDIR/label_subset.json. SimCLRv2's recipe:
LARS 0.005 x sqrt(batch), no weight decay, global BN; 60 epochs at <= 1% labels, else 30.
Cost: ~2 min on one H100 for ResNet-18 on 10% of the labels.
Expected: not measured with sslx, and no published figure for this setting (SimCLRv2 reports ImageNet only).
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.finetune.label_fraction = 0.1
    c.finetune.head_layers = 0
    c.finetune.batch_size = 256
    c.finetune.checkpoint_every_steps = 500
    return c
