"""Quick start: SimCLR on scikit-learn's bundled digits (real 8x8 images, no download).

    sslx-pretrain --config configs/quickstart.py --workdir /tmp/sslx-quickstart

A narrow ResNet-18 (CIFAR stem) on the 8 px digits, on whatever devices JAX sees.
Cost: about 1.5 minutes on a 2-core CPU (~20 s of it compiling the step). Result: the linear probe of the
learned encoder beats the same encoder at random initialisation (both printed and written to results.json).
"""
from sslx.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8             # the digits' native size: upsampling adds compute, not information
    c.data.shuffle_buffer = 2048
    c.augment.preset = "cifar"
    c.augment.crop_area_min = 0.3       # digits are tiny: an 8% crop of an 8x8 image is one stroke
    c.augment.flip_prob = 0.0           # mirrored digits are other glyphs
    c.model.name = "resnet18"
    c.model.width = 0.25
    c.model.cifar_stem = True
    c.head.hidden_dim = 128
    c.head.out_dim = 64
    c.batch_size = 128
    c.total_steps = 150
    c.loss.temperature = 0.2
    c.optim.name = "lars"
    c.optim.base_lr = 1.0
    c.optim.warmup_steps = 15
    c.log_every_steps = 25
    c.checkpoint_every_steps = 50
    c.eval.batch_size = 256
    return c
