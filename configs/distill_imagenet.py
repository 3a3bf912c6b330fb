"""SimCLRv2 distillation on ImageNet (Chen et al. 2020b, sec. 2 and appendix): unlabelled ImageNet, 400 epochs.

    sslx-distill --config configs/distill_imagenet.py --workdir gs://BUCKET/distill_r50 \
        --config.teacher=gs://BUCKET/finetune_r152_3x_sk_1pct

The data section is the teacher's. Big-to-small by default: a ResNet-50 1x student (tau 1.0) from scratch; for
self-distillation pass --config.student.model.name= --config.distill.temperature=0.1. The pretraining's schedule:
batch 4096, LARS 0.3 x B/256, weight decay 1e-4, 10 warm-up epochs, global BN, random crop + flip.
Cost: ~30 h on a TPU v3-128 slice with an R152 3x+SK teacher run online (the teacher dominates; precompute its
logits once with --config.distill.precompute=True to pay for it once, at the price of centre-crop targets).
Expected (paper's numbers, table 3; not measured with sslx): R152 3x+SK distilled into R50 1x: 73.9 / 77.5
top-1 from 1% / 10% labels.
"""
from sslx.config import distill_config


def get_config():
    c = distill_config()
    c.student.model.name = "resnet50"
    c.student.model.width = 1.0
    c.student.model.cifar_stem = False
    c.student.model.dtype = "bfloat16"
    c.distill.temperature = 1.0
    c.distill.epochs = 400.0
    c.distill.batch_size = 4096
    c.eval_batch_size = 1024
    c.distill.checkpoint_every_steps = 2500
    return c
