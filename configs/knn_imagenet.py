"""Weighted kNN (k 20 and 200, T 0.07) on ImageNet: 50k validation queries against the 1.28M training features.

    sslx-knn --config configs/knn_imagenet.py --workdir gs://BUCKET/knn_imagenet \
        --config.pretrained=gs://BUCKET/simclr_imagenet [--config.step=N]

The training bank is split over the devices (1.28M x 2048 floats = 10 GB in all); queries go 256 at a time.
Cost: ~10 min on a TPU v3-32 for ResNet-50, dominated by feature extraction.
Expected (published, not measured with sslx): lightly's ImageNet benchmark, ResNet-50 SimCLR, 100 epochs,
batch 256: kNN top-1 44.8.
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.knn.ks = (20, 200)
    c.knn.temperature = 0.07
    c.knn.query_chunk = 256
    c.eval_batch_size = 1024
    return c
