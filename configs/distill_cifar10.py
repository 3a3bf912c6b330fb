"""SimCLRv2 distillation on CIFAR-10: a fine-tuned classifier teaches a student on all 50k unlabelled images.

    sslx-distill --config configs/distill_cifar10.py --workdir /tmp/distill_cifar10 \
        --config.teacher=FINETUNE_WORKDIR [--config.student.model.width=0.5] [--config.student.pretrained=PRETRAIN]

Self-distillation by default (the student takes the teacher's architecture, without head layers, tau 0.1); set
config.student.model.* (with name) for a smaller student and config.distill.temperature=1.0 (the paper's
big-to-small setting). --config.distill.precompute=True writes WORKDIR/teacher_logits.npy instead; pass it as
--config.distill.teacher_logits to train without running the teacher.
Cost: ~4 min on one H100 for ResNet-18, 200 epochs.
Expected (the paper's finding on ImageNet, SimCLRv2 fig. 10 / table 3; not measured with sslx on CIFAR-10): the
student matches or slightly beats its teacher's top-1.
"""
from sslx.config import distill_config


def get_config():
    c = distill_config()
    c.distill.temperature = 0.1
    c.distill.epochs = 200.0
    c.distill.batch_size = 512
    c.distill.optim.base_lr = 1.0
    c.distill.optim.weight_decay = 1e-6
    c.distill.checkpoint_every_steps = 2000
    return c
