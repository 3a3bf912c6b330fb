"""DINO on CIFAR-10 with a ResNet-18 (CIFAR stem), multi-crop at CIFAR's scale.

    sslx-pretrain --config configs/dino_cifar10.py --workdir DIR [--config.data.data_dir=TFDS_DIR]

Two global crops of 32 px (14-100% of the image) and six local crops of 16 px (5-14%), the crop areas of DINO's
ResNet-50 command, with DINO's per-crop blur and solarize; head 2048-2048-256 then a weight-normalised layer to 4096
outputs (norm held at 1, frozen in the first epoch); teacher temperature 0.04 -> 0.07 over 50 epochs, teacher EMA
0.996 -> 1 by a cosine; LARS 0.3 x B/256, weight decay 1e-6, batch 256, 1000 epochs. These CIFAR settings are
sslx's choice (the DINO paper has no CIFAR-10 recipe). Target (published, not measured with sslx): solo-learn's
DINO ResNet-18 reaches 89.52 online linear top-1 on CIFAR-10 after 1000 epochs with its own recipe.
For a ViT: --config.model.name=vit_ti4 (4 px patches; the local crops then have a 4x4 grid).
"""

from sslx.config import base_config, use_dino_crops


def get_config():
    c = base_config()
    c.method = "dino"
    c.data.name, c.data.image_size, c.data.cache = "cifar10", 32, True
    c.augment.preset = "cifar"
    use_dino_crops(c.augment, global_size=32, global_area=(0.14, 1.0), local_count=6, local_size=16,
                   local_area=(0.05, 0.14))
    c.model.name, c.model.cifar_stem = "resnet18", True
    c.dino.out_dim = 4096
    c.dino.warmup_teacher_temperature, c.dino.teacher_temperature = 0.04, 0.07
    c.dino.warmup_teacher_temperature_epochs = 50
    c.batch_size = 256
    c.epochs = 1000.0
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.3, 1e-6, 10.0
    return c
