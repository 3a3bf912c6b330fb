"""SimCLRv2 fine-tuning on 10% of ImageNet's labels (TFDS imagenet2012_subset/10pct, SimCLR's list).

    sslx-finetune --config configs/finetune_imagenet_10pct.py --workdir gs://BUCKET/finetune_10pct \
        --config.pretrained=gs://BUCKET/simclrv2_imagenet [--config.step=N]

Encoder + the first projection-head layer + a new linear classifier, all trained: LARS 0.005 x sqrt(1024) =
0.16, no weight decay, no warm-up, global BN, batch 1024, 30 epochs; top-1/top-5 on the validation split.
Needs imagenet2012_subset prepared in config.data.data_dir (tfds build imagenet2012_subset/10pct).
Cost: ~60 min on a TPU v3-32 for ResNet-50.
Expected (papers' numbers, not measured with sslx): top-1 65.6% for SimCLR v1 ResNet-50 (SimCLR table 7),
68.4% for SimCLRv2 ResNet-50 1x (SimCLRv2 table 1), no distillation.
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.finetune.label_fraction = 0.1
    c.finetune.head_layers = 1
    c.finetune.epochs = 30.0
    c.finetune.batch_size = 1024
    c.eval_batch_size = 1024
    return c
