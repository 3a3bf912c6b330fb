"""Linear evaluation on ImageNet (SimCLR sec. B.5: Nesterov SGD, batch 4096, lr 0.1 x B/256, 90 epochs).

    sslx-linear-eval --config configs/linear_eval_imagenet.py --workdir gs://BUCKET/linear_imagenet \
        --config.pretrained=gs://BUCKET/simclr_imagenet [--config.step=N] [--config.linear.mode=fast]

Inception crop + flip at 224 px through the frozen encoder; reports top-1/top-5 on the validation split.
Fast mode caches 1.28M x 2048 features (10 GB in float32) and is the quick check between runs.
Cost: protocol ~1.5 h on a TPU v3-32 for ResNet-50; fast ~10 min.
Expected (papers' numbers, not measured with sslx): ResNet-50 (1x) SimCLR v1 at 1000 epochs 69.3% top-1;
SimCLRv2 (3-layer head) 71.7%.
"""
from sslx.config import eval_config


def get_config():
    c = eval_config()
    c.linear.mode = "protocol"
    c.linear.epochs = 90
    c.linear.batch_size = 4096
    c.linear.learning_rates = (0.1,)
    c.linear.weight_decay = 0.0
    c.eval_batch_size = 1024
    return c
