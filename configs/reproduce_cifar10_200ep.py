"""Suite cifar10-200ep: all eight methods, ResNet-18 (CIFAR stem), batch 512, 200 epochs, kNN every 10 epochs.

    python launch/reproduce.py --config configs/reproduce_cifar10_200ep.py --workdir ROOT \
        [--config.methods=simclr,byol] [--config.pretrain.data.data_dir=TFDS_DIR]

Each method's own CIFAR-10 recipe (configs/<method>_cifar10.py: its head, loss, optimizer and augmentations)
at lightly's benchmark length and batch, views made on the accelerator, bfloat16 compute. Scored by kNN
(k 200, T 0.07, all 50,000 train images as the bank) and fast linear eval, next to the raw-pixel and
random-init baselines of the same run.
Published anchors (lightly's CIFAR-10 benchmark, ResNet-18, 200 epochs, batch 512, kNN top-1): SimCLR 84.8,
BYOL 86.8. Not yet measured with sslx: no GPU was lent to the sessions that built this suite.
"""
from sslx.config import accelerator_suite


def get_config():
    c = accelerator_suite("cifar10-200ep", epochs=200.0, knn_every_epochs=10.0)
    c.pretrain.batch_size = 512
    source = "lightly benchmark, R18 200 ep, batch 512"
    c.anchors = {"simclr": {"knn": 0.848, "source": source}, "byol": {"knn": 0.868, "source": source}}
    return c
