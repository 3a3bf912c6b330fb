"""Weighted kNN (k 20 and 200, T 0.07) on CIFAR-10 features of a frozen encoder; no training.

    sslx-knn --config configs/knn_cifar10.py --workdir /tmp/knn_cifar10 \
        --config.pretrained=PRETRAIN_WORKDIR [--config.step=N]

results.json: top1/top5 at k=20, plus k20_* and k200_*. The data section is the pretraining's unless set.
Cost: ~20 s on one H100 for ResNet-18 (feature extraction dominates).
Expected (published, not measured with sslx): lightly's CIFAR-10 benchmark, ResNet-18, 200 epochs: kNN top-1
84.8 for SimCLR, 86.8 for BYOL.
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.knn.ks = (20, 200)
    c.knn.temperature = 0.07
    return c
