"""Suite cifar10-1000ep: all eight methods at solo-learn's CIFAR-10 setting, ResNet-18 (CIFAR stem), 1000 epochs.

    python launch/reproduce.py --config configs/reproduce_cifar10_1000ep.py --workdir ROOT \
        [--config.methods=simclr,byol] [--config.pretrain.data.data_dir=TFDS_DIR]

Each method's recipe as shipped (configs/<method>_cifar10.py follow solo-learn's batch, optimizer, heads and
augmentations), views made on the accelerator, bfloat16 compute; kNN every 50 epochs, then kNN (k 200, T 0.07)
and fast linear eval next to the raw-pixel and random-init baselines of the same run.
Published anchors (solo-learn's README, ResNet-18, 1000 epochs, linear top-1): SimCLR 90.74, BYOL 92.58,
MoCo V2+ 92.94, MoCo V3 93.10, SimSiam 90.51, Barlow Twins 92.10, VICReg 92.07, SupCon 93.82.
Not yet measured with sslx: no GPU was lent to the sessions that built this suite.
"""
from sslx.config import accelerator_suite

SOLO_LEARN = {"simclr": 0.9074, "byol": 0.9258, "mocov2": 0.9294, "mocov3": 0.9310, "simsiam": 0.9051,
              "barlow_twins": 0.9210, "vicreg": 0.9207, "supcon": 0.9382}


def get_config():
    c = accelerator_suite("cifar10-1000ep", epochs=1000.0, knn_every_epochs=50.0)
    c.anchors = {method: {"linear": top1, "source": "solo-learn, R18 1000 ep"}
                 for method, top1 in SOLO_LEARN.items()}
    c.anchors.mocov2.source = "solo-learn's MoCo V2+, R18 1000 ep"   # its symmetric-loss MoCo v2 variant
    return c
