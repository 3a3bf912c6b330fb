"""SimCLRv2 fine-tuning on 1% of ImageNet's labels (TFDS imagenet2012_subset/1pct, SimCLR's list).

    sslx-finetune --config configs/finetune_imagenet_1pct.py --workdir gs://BUCKET/finetune_1pct \
        --config.pretrained=gs://BUCKET/simclrv2_imagenet [--config.step=N]

Encoder + the first projection-head layer + a new linear classifier, all trained: LARS 0.005 x sqrt(1024) =
0.16, no weight decay, no warm-up, global BN, batch 1024, 60 epochs; top-1/top-5 on the validation split.
Needs imagenet2012_subset prepared in config.data.data_dir (tfds build imagenet2012_subset/1pct).
Cost: ~15 min on a TPU v3-32 for ResNet-50.
Expected (papers' numbers, not measured with sslx): top-1 48.3% for SimCLR v1 ResNet-50 (SimCLR table 7),
57.9% for SimCLRv2 ResNet-50 1x (SimCLRv2 table 1), no distillation.
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.finetune.label_fraction = 0.01
    c.finetune.head_layers = 1
    c.finetune.epochs = 60.0
    c.finetune.batch_size = 1024
    c.eval_batch_size = 1024
    return c
