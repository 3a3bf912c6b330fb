"""The base pretraining config every recipe in configs/ starts from, and its up-front validation."""
from __future__ import annotations

import ml_collections

BN_MODES = ("global", "replica")
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "simclr"
    c.seed = 0
    c.batch_size = 512            # global batch over all devices and processes
    c.total_steps = -1            # > 0 wins over epochs
    c.epochs = 100.0

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"       # digits | tfrecord | a TFDS name
    c.data.data_dir = ml_collections.config_dict.placeholder(str)   # TFDS data_dir
    c.data.path = ml_collections.config_dict.placeholder(str)       # tfrecord directory
    c.data.num_classes = -1       # tfrecord without labels.txt
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.shuffle_buffer = 10_000
    c.data.cache = False          # keep decoded images in memory (small data sets)

    c.augment = ml_collections.ConfigDict()
    c.augment.preset = "cifar"    # cifar | imagenet | none; any AugmentSpec field overrides it

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.width = 1.0
    c.model.cifar_stem = True
    c.model.sk_ratio = 0.0
    c.model.bn = "global"         # global: statistics over all replicas; replica: per device
    c.model.bn_momentum = 0.9
    c.model.dtype = "float32"     # compute dtype; params and the loss stay float32

    c.head = ml_collections.ConfigDict()
    c.head.version = "v1"
    c.head.num_layers = -1        # -1: the version's default (v1: 2, v2: 3)
    c.head.hidden_dim = 2048
    c.head.out_dim = 128

    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = 0.5

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lars"
    c.optim.base_lr = 1.0
    c.optim.lr_scaling = "linear"
    c.optim.warmup_epochs = 10.0
    c.optim.warmup_steps = -1     # >= 0 wins over warmup_epochs
    c.optim.weight_decay = 1e-6
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.lars_eta = 1e-3

    c.probe = ml_collections.ConfigDict()
    c.probe.online = True         # linear classifier on stop_gradient(features) during pretraining

    c.eval = ml_collections.ConfigDict()
    c.eval.linear_probe = True    # at the end: fast linear probe vs the same encoder at random init
    c.eval.batch_size = 512
    c.eval.probe_steps = 300      # L-BFGS iterations of the logistic regression
    c.eval.probe_train_examples = -1   # cap on train-split examples the probe fits on (-1: all)
    c.eval.probe_l2 = 1e-4

    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    return c


def _choice(value, choices, key):
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks that need no data or devices; raises ValueError with a one-line message naming the key."""
    _choice(config.model.bn, BN_MODES, "config.model.bn")
    _choice(config.model.dtype, DTYPES, "config.model.dtype")
    if config.batch_size <= 0:
        raise ValueError(f"config.batch_size={config.batch_size} must be positive.")
    if config.total_steps <= 0 and config.epochs <= 0:
        raise ValueError("set config.total_steps or config.epochs to a positive number.")
    if config.loss.temperature <= 0:
        raise ValueError(f"config.loss.temperature={config.loss.temperature} must be positive.")
    if config.data.name == "tfrecord" and not config.data.path:
        raise ValueError("config.data.name='tfrecord' needs config.data.path=<directory of {split}-*.tfrecord files>.")
