"""Quick start: SimCLR on scikit-learn's bundled digits (real 8x8 images, no download).

    sslx-pretrain --config configs/quickstart.py --workdir /tmp/sslx-quickstart

A narrow ResNet-18 (CIFAR stem) on the 8 px digits, 300 steps at batch 128, on whatever devices JAX sees.
Measured with sslx (the command above, one CPU device): linear probe top-1 (L-BFGS logistic regression on
standardised features, 1,500 train / 297 test digits) 0.919 for the learned encoder, against 0.902 for the raw
pixels and 0.862 for the encoder at a random initialisation, on the same split and probe (all three printed and
written to results.json). With `--config.seed=1` and `=2`: 0.913 and 0.909 learned (random init 0.832 and 0.849,
pixels 0.902). Short runs like this one are sensitive to tiny numeric differences: with crops down to 30% of the
image (the previous setting) seed 0 scored 0.916 with views that differed from today's by 2e-7 and 0.882 with
today's (pixels 0.902, random init 0.862 in both runs), seed 1 0.943 (pixels 0.902, random init 0.832); crops
down to 20% beat the pixels with all three seeds. Cost: the run itself took 68 s
(wall) on 2 cores (`/usr/bin/time sslx-pretrain --config configs/quickstart.py --workdir W`; 116 s, with the same
0.919 / 0.902 / 0.862, in a slower hour of this shared machine).
"""
from sslx.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8             # the digits' native size: upsampling adds compute, not information
    c.data.shuffle_buffer = 2048
    c.augment.preset = "cifar"
    c.augment.crop_area_min = 0.2       # digits are tiny: an 8% crop of an 8x8 image is one stroke
    c.augment.flip_prob = 0.0           # mirrored digits are other glyphs
    c.model.name = "resnet18"
    c.model.width = 0.25
    c.model.cifar_stem = True
    c.head.hidden_dim = 128
    c.head.out_dim = 64
    c.batch_size = 128
    c.total_steps = 300
    c.loss.temperature = 0.2
    c.optim.name = "lars"
    c.optim.base_lr = 2.0               # x 128/256: peak 1.0 (base 1.0: 0.899 vs pixels 0.902 at crops >= 30%)
    c.optim.warmup_steps = 15
    c.log_every_steps = 25
    c.checkpoint_every_steps = 100
    c.eval.batch_size = 256
    return c
