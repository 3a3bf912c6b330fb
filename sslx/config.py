"""The base pretraining config every recipe in configs/ starts from, and its up-front validation."""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import pathlib
from typing import Any, Iterator

import ml_collections

BN_MODES = ("global", "replica")
DTYPES = ("float32", "bfloat16")


# Installed, the recipes are the package sslx.configs; in a checkout, configs/ beside sslx/ (an editable install
# maps sslx.configs there without a folder under sslx/).
RECIPE_DIRS = tuple(pathlib.Path(__file__).resolve().parent / sub for sub in ("configs", "../configs"))


def recipe_names() -> list[str]:
    """The shipped recipes, by name (`simclr_cifar10`, ...)."""
    names = {p.stem for folder in RECIPE_DIRS if folder.is_dir() for p in folder.glob("*.py")}
    return sorted(names - {"__init__"})


def resolve_recipe(recipe: str | os.PathLike) -> pathlib.Path:
    """A recipe file: an existing path, or a shipped recipe named `simclr_cifar10` or `configs/simclr_cifar10.py`
    (so the README's commands also work outside a checkout)."""
    path = pathlib.Path(recipe)
    if path.is_file():
        return path
    if path.suffix in ("", ".py") and (path.parent == pathlib.Path(".") or path.parent.name == "configs"):
        for folder in RECIPE_DIRS:
            if (folder / f"{path.stem}.py").is_file() and path.stem != "__init__":
                return (folder / f"{path.stem}.py").resolve()
    raise FileNotFoundError(f"recipe {recipe} not found: pass a recipe file, or one of the shipped recipes by name: "
                            f"{', '.join(recipe_names())}")


def load_recipe(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a recipe (a file given by path, or a shipped recipe's name), as `--config` reads it."""
    path = resolve_recipe(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The method --config.method names on the command line, while sslx.cli loads the recipe (see method_override).
_METHOD_OVERRIDE: contextvars.ContextVar[str] = contextvars.ContextVar("method_override", default="")


@contextlib.contextmanager
def method_override(method: str) -> Iterator[None]:
    """Recipes loaded inside also get the config section of `method`: how `--config.method=<module>:<Class>` on
    the command line gives a recipe written for another method that method's section before the
    `--config.<section>.<key>=` overrides apply."""
    token = _METHOD_OVERRIDE.set(method)
    try:
        yield
    finally:
        _METHOD_OVERRIDE.reset(token)


def base_config(method: str = "simclr") -> ml_collections.ConfigDict:
    """Every pretraining key with its default. `method` is config.method: a registered name, or a method of your
    own, '<module>:<Class>', whose config section this adds beside those of the registered methods."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.batch_size = 512            # global batch over all devices and processes
    c.total_steps = -1            # > 0 wins over epochs
    c.epochs = 100.0
    c.micro_batch_size = 0        # > 0: GradCache accumulation over per-device micro-batches of this size

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"       # digits | tfrecord | folder | a TFDS name
    c.data.data_dir = ml_collections.config_dict.placeholder(str)   # TFDS data_dir
    c.data.path = ml_collections.config_dict.placeholder(str)       # tfrecord directory, or image folder
    c.data.num_classes = -1       # tfrecord without labels.txt
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.shuffle_buffer = 10_000
    c.data.cache = False          # keep decoded images in memory (small data sets)
    c.data.skip_corrupt = True    # drop records that do not decode, counted in results.json; False: stop, naming it
    c.data.eval_fraction = 0.1    # folder without split subfolders: share of each class held out as eval_split
    c.data.split_seed = 0         # folder: seeds that hold-out and the fixed (shuffled) read order

    c.augment = ml_collections.ConfigDict()
    c.augment.preset = "cifar"    # cifar | imagenet | none; any AugmentSpec field overrides it
    c.augment.on_device = False   # True: the host only decodes; views are made on the devices (device_augment)
    c.augment.host_size = 0       # on_device, variable-size images: host square side (0: image_size * 8 / 7)
    # Multi-crop (DINO, SwAV): a tuple of entries {count, size, AugmentSpec fields...}, each adding `count` views of
    # `size` px with those settings over the shared ones, the global crops first (see crop()); () gives the
    # two views of data.image_size that view1/view2 adjust. Override one entry with --config.augment.crops[1].count=8.
    c.augment.crops = ()

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    # ResNets (resnet18 ... resnet200) read width .. zero_init_residual; bn and bn_momentum also set the heads' BN.
    c.model.width = 1.0
    c.model.cifar_stem = True
    c.model.sk_ratio = 0.0
    c.model.bn = "global"         # global: statistics over all replicas; replica: per device
    c.model.bn_momentum = 0.9
    c.model.dtype = "float32"     # compute dtype; params and the loss stay float32
    c.model.remat = False         # recompute each encoder block (ResNet or ViT) in the backward pass
    c.model.tf_pooling = False    # pool as SimCLR's TF ResNet (set by sslx-import-simclr; see sslx/models/resnet.py)
    c.model.zero_init_residual = True  # each residual branch's last BN scale starts at 0 (Goyal et al. 2017)
    # ViTs (model.name vit_s16 | vit_b16 | vit_ti4) read only this section (besides name, dtype, remat); each field
    # <= 0 keeps the named variant's value (see sslx/models/vit.py); image_size: the side the learned position
    # embeddings are made for (other input sizes resize them); drop_path_rate: stochastic depth of the online network
    # in pretraining, rising linearly over the blocks to this rate (0: off; DINO's ViT-S/16 0.1).
    c.model.vit = ml_collections.ConfigDict({"patch_size": -1, "hidden_dim": -1, "depth": -1, "num_heads": -1,
                                             "mlp_dim": -1, "image_size": -1, "drop_path_rate": 0.0})

    c.head = ml_collections.ConfigDict()
    c.head.version = "v1"
    c.head.num_layers = -1        # -1: the version's default (v1: 2, v2: 3)
    c.head.hidden_dim = -1        # -1: the encoder's feature width (SimCLR's choice)
    c.head.out_dim = 128
    c.head.use_bn = True          # False: Dense-ReLU-Dense (MoCo v2, SupCon)
    c.head.final_bn = True        # BN on the output (SimCLR, SimSiam, MoCo v3); False: BYOL, Barlow Twins, VICReg

    c.predictor = ml_collections.ConfigDict()   # BYOL, SimSiam, MoCo v3
    c.predictor.num_layers = 0    # 0: no predictor; methods with one need >= 1
    c.predictor.hidden_dim = -1   # -1: the projection width

    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = 0.5
    c.loss.chunk_size = 0         # > 0: NT-Xent over chunks of this many candidate columns (huge global batches)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lars"
    c.optim.base_lr = 1.0
    c.optim.lr_scaling = "linear"
    c.optim.warmup_epochs = 10.0
    c.optim.warmup_steps = -1     # >= 0 wins over warmup_epochs
    c.optim.warmup_start_lr = 0.0  # the warm-up's first rate (unscaled; SwAV's start_warmup)
    c.optim.end_lr = 0.0          # the cosine's last rate (unscaled; DINO's min_lr 1e-6, SwAV's final_lr)
    c.optim.weight_decay = 1e-6
    c.optim.weight_decay_end = -1.0   # >= 0: weight decay follows a cosine to this over the run (DINO: 0.04 -> 0.4)
    c.optim.exclude_norm_and_bias = True   # no weight decay or LARS trust ratio on rank-1 parameters (SwAV: False)
    c.optim.grad_clip_per_tensor = 0.0    # > 0: each parameter tensor's gradient clipped to this norm (DINO: 3.0)
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.lars_eta = 1e-3
    c.optim.constant_lr_modules = ()   # top-level param names held at the peak LR, not decayed (SimSiam)

    c.probe = ml_collections.ConfigDict()
    c.probe.online = True         # linear classifier on stop_gradient(features) during pretraining

    c.eval = ml_collections.ConfigDict()
    c.eval.linear_probe = True    # at the end: fast linear probe, with random-init and raw-pixel baselines
    c.eval.batch_size = 512
    c.eval.probe_steps = 300      # L-BFGS iterations of the logistic regression
    c.eval.probe_train_examples = -1   # cap on train-split examples the probe fits on (-1: all)
    c.eval.probe_l2 = 1e-4
    c.eval.pixel_probe_size = 32  # raw-pixel baseline of the probe, images resized to at most this a side (0: off)
    c.eval.every_steps = 0        # > 0: run the periodic evaluators every N steps (logged like any metric)
    c.eval.periodic = ""          # comma-separated names from sslx.evaluators.periodic.EVALUATORS, e.g. "knn"
    c.knn = knn_config()          # the periodic kNN (config.eval.periodic='knn'), keys as sslx-knn's

    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.distributed = distributed_config()
    add_method_sections(c, method, _METHOD_OVERRIDE.get())
    return c


def add_method_sections(c: ml_collections.ConfigDict, *methods: str) -> None:
    """Each method's own section (config.byol, config.dino, ...: Method.default_config, next to its code), for the
    registered methods and the external `methods`."""
    from sslx import methods as methods_lib   # here, not at the top: sslx.methods imports this module
    for section, defaults in methods_lib.config_sections(*filter(None, methods)).items():
        if section in c:
            raise ValueError(f"config.{section} is a shared section: a method's config_section needs a name of "
                             f"its own")
        c[section] = defaults


def distributed_config() -> ml_collections.ConfigDict:
    """How a process joins a multi-process run (sslx.parallel.initialize_distributed); defaults detect it."""
    c = ml_collections.ConfigDict()
    c.cluster = "auto"            # auto | none | explicit | slurm | tpu
    c.coordinator_address = ""    # explicit: host:port of process 0
    c.num_processes = 0           # explicit: the number of processes; under SLURM, 0 or SLURM_NTASKS
    c.process_id = -1             # explicit: this process's index in [0, num_processes)
    c.initialization_timeout = 300     # seconds to wait for every process to join
    c.heartbeat_timeout = 100     # seconds of silence after which a process counts as dead and the run stops
    c.shutdown_timeout = 300      # seconds the processes wait for each other at exit
    return c


def knn_config() -> ml_collections.ConfigDict:
    """`config.knn`: the kNN stage's and the pretraining's periodic kNN (sslx.evaluators.knn.KnnEvaluator)."""
    c = ml_collections.ConfigDict()
    c.ks = (20, 200)
    c.temperature = 0.07
    c.train_examples = -1         # cap on the train-split bank (-1: all)
    c.query_chunk = 1024          # test rows ranked per call: bounds the [chunk, bank / devices] similarities
    return c


def eval_config() -> ml_collections.ConfigDict:
    """The base of the evaluation recipes (sslx-linear-eval, sslx-knn, sslx-finetune); each reads its section."""
    c = ml_collections.ConfigDict()
    c.pretrained = ""             # the pretraining workdir to evaluate (required)
    c.step = -1                   # its checkpoint step (-1: the latest)
    c.seed = 0
    c.head_layer = 0              # linear eval / kNN features: 0 the encoder output, i head layer i (SimCLRv2)
    c.baseline = ""               # linear eval / kNN of a baseline instead: "pixels" | "random_init" (the
                                  # pretrained architecture at a random init); "" the pretrained encoder
    c.pixel_size = 32             # baseline "pixels": images resized to at most this a side
    c.eval_batch_size = 512       # feature extraction and test-set inference
    c.features_dir = ""           # kNN / linear eval: save each split's features here and read them back when
                                  # the same network, baseline and data are evaluated again ("" keeps none)
    c.embedding_map_points = 1000  # linear eval / kNN: eval-set points in plots/embedding_map.png (0: no map)

    c.data = base_config().data   # used when data.name is set; "" takes the pretraining's data section
    c.data.name = ""
    c.data.cache = False

    c.linear = ml_collections.ConfigDict()
    c.linear.mode = "protocol"    # protocol: augmented crops through the frozen encoder | fast: cached features
    c.linear.solver = "sgd"       # fast mode: sgd (the protocol's optimizer and epochs) | lbfgs (full batch)
    c.linear.epochs = 90
    c.linear.crop_area_min = 0.08  # protocol mode: random resized crops of [this, 1] of the image (SimCLR's 0.08)
    c.linear.batch_size = 1024    # global
    c.linear.learning_rates = (0.1,)   # x batch_size / 256; more than one: sweep, selected on a held-out split
    c.linear.val_fraction = 0.1   # of train, held out for the sweep (then the best rate retrains on all of train)
    c.linear.momentum = 0.9
    c.linear.nesterov = True
    c.linear.weight_decay = 0.0
    c.linear.lbfgs_steps = 500
    c.linear.lbfgs_l2 = 1e-4
    c.linear.log_every_steps = 100     # protocol mode's loop (each classifier checkpoints in WORKDIR/classifiers/)
    c.linear.checkpoint_every_steps = 1000
    c.linear.keep_checkpoints = 1

    c.knn = knn_config()

    c.finetune = ml_collections.ConfigDict()
    c.finetune.label_fraction = 1.0    # in (0, 1]; imagenet2012 at 0.01 / 0.1 uses TFDS imagenet2012_subset
    c.finetune.subset_seed = 0
    c.finetune.head_layers = 0    # projection-head layers kept under the classifier (SimCLRv2: 1)
    c.finetune.epochs = -1.0      # -1: SimCLRv2's 60 for <= 1% of the labels, else 30
    c.finetune.batch_size = 1024
    c.finetune.optim = base_config().optim
    c.finetune.optim.base_lr = 0.005   # SimCLRv2: 0.005 x sqrt(batch), LARS, no weight decay, no warm-up
    c.finetune.optim.lr_scaling = "sqrt"
    c.finetune.optim.weight_decay = 0.0
    c.finetune.optim.warmup_epochs = 0.0
    c.finetune.log_every_steps = 50
    c.finetune.checkpoint_every_steps = 1000
    c.finetune.keep_checkpoints = 2
    c.distributed = distributed_config()
    return c


def distill_config() -> ml_collections.ConfigDict:
    """The base of the distillation recipes (sslx-distill, configs/distill_*.py)."""
    c = ml_collections.ConfigDict()
    c.teacher = ""                # a fine-tuned (or distilled) classifier workdir (required)
    c.teacher_step = -1           # its checkpoint step (-1: the latest)
    c.seed = 0
    c.eval_batch_size = 512
    c.data = base_config().data   # used when data.name is set; "" takes the teacher's data section
    c.data.name = ""

    c.student = ml_collections.ConfigDict()
    c.student.model = base_config().model
    c.student.model.name = ""     # "": the teacher's architecture (self-distillation) or student.pretrained's
    c.student.pretrained = ""     # optional pretraining workdir whose encoder initialises the student

    c.distill = ml_collections.ConfigDict()
    c.distill.temperature = 1.0
    c.distill.supervised_weight = 0.0  # > 0: plus this x the cross-entropy on the labelled subset
    c.distill.label_fraction = 0.1     # that subset, drawn as sslx-finetune draws it
    c.distill.subset_seed = 0
    c.distill.labelled_batch_size = 256
    c.distill.teacher_logits = ""      # a .npy of teacher logits for the train split in read order
    c.distill.precompute = False       # True: only write WORKDIR/teacher_logits.npy and stop
    c.distill.epochs = 400.0           # SimCLRv2's distillation length
    c.distill.total_steps = -1         # > 0 wins over epochs
    c.distill.batch_size = 4096
    c.distill.optim = base_config().optim
    c.distill.optim.base_lr = 0.3      # the pretraining's LARS 0.3 x B/256, weight decay 1e-4, 10 warm-up epochs
    c.distill.optim.weight_decay = 1e-4
    c.distill.log_every_steps = 100
    c.distill.checkpoint_every_steps = 1000
    c.distill.keep_checkpoints = 2
    c.distributed = distributed_config()
    return c


def use_imagenet_resnet50(c: ml_collections.ConfigDict) -> None:
    """ImageNet at 224 px (Inception-style crops) into a bfloat16 ResNet-50: the base of every ImageNet recipe."""
    c.data.name, c.data.image_size = "imagenet2012", 224
    c.augment.preset = "imagenet"
    # Host augmentation: a TPU v4 host's 240 vCPUs make ~4.9x the views its 4 chips train on at 224 px, costing the
    # chips nothing (docs/scaling.md, "Host or device augmentation": sslx-benchmark's feed verdict).
    c.augment.on_device = False
    c.model.name, c.model.cifar_stem, c.model.dtype = "resnet50", False, "bfloat16"


def use_byol_views(augment: ml_collections.ConfigDict) -> None:
    """BYOL's asymmetric ImageNet views (Grill et al. 2020, table 6), shared by the recipes that adopt them."""
    augment.brightness, augment.contrast, augment.saturation, augment.hue = 0.4, 0.4, 0.2, 0.1
    augment.jitter_prob = 0.8
    augment.grayscale_prob = 0.2
    augment.view1 = ml_collections.ConfigDict({"blur_prob": 1.0, "solarize_prob": 0.0})
    augment.view2 = ml_collections.ConfigDict({"blur_prob": 0.1, "solarize_prob": 0.2})


# Keys of a config.augment.crops entry besides AugmentSpec fields: how many views it makes, and their side.
CROP_KEYS = ("count", "size")


def crop_entries(crops: Any) -> list[dict]:
    """config.augment.crops as plain dicts, each with a positive integer count and size."""
    entries = [dict(c.to_dict() if hasattr(c, "to_dict") else c) for c in crops]
    for i, entry in enumerate(entries):
        for key in CROP_KEYS:
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config.augment.crops[{i}].{key}={value!r} must be a positive integer (each crop "
                                 f"entry needs count, the views it makes, and size, their side in pixels).")
    return entries


def view_sizes(augment: Any, image_size: int) -> tuple[int, ...]:
    """Each view's side in pixels, in the order of sslx.data.spec_from_config's specs: `image_size` for the two
    default views, each config.augment.crops entry's `size`, `count` times."""
    crops = augment.get("crops") or ()
    if not crops:
        return (image_size, image_size)
    return tuple(entry["size"] for entry in crop_entries(crops) for _ in range(entry["count"]))


def crop(count: int, size: int, area: tuple[float, float], **fields) -> ml_collections.ConfigDict:
    """One config.augment.crops entry: `count` views of `size` px cropped from `area` (min, max) of the image, with
    other AugmentSpec `fields` (blur_prob, solarize_prob, ...) over the shared settings."""
    return ml_collections.ConfigDict({"count": count, "size": size, "crop_area_min": area[0],
                                      "crop_area_max": area[1], **fields})


def use_dino_crops(augment: ml_collections.ConfigDict, global_size: int, global_area: tuple[float, float],
                   local_count: int, local_size: int, local_area: tuple[float, float]) -> None:
    """DINO's multi-crop (Caron et al. 2021, DataAugmentationDINO): BYOL's colour jitter on every crop; the first
    global crop always blurred, the second blurred with p 0.1 and solarized with p 0.2; the local crops blurred
    with p 0.5."""
    augment.brightness, augment.contrast, augment.saturation, augment.hue = 0.4, 0.4, 0.2, 0.1
    augment.jitter_prob, augment.grayscale_prob = 0.8, 0.2
    augment.crops = (crop(1, global_size, global_area, blur_prob=1.0),
                     crop(1, global_size, global_area, blur_prob=0.1, solarize_prob=0.2),
                     crop(local_count, local_size, local_area, blur_prob=0.5))


def _choice(value, choices, key):
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}.")


def check_positive(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> None:
    """One-line errors for dotted `keys` of `config` that must be positive integers (steps, sizes, counts)."""
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{key}={value!r} must be a positive integer.")


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
    if config.loss.chunk_size < 0:
        raise ValueError(f"config.loss.chunk_size={config.loss.chunk_size} must be 0 (plain NT-Xent) or positive.")
    if config.micro_batch_size < 0:
        raise ValueError(f"config.micro_batch_size={config.micro_batch_size} must be 0 (off) or positive.")
    check_positive(config, ("data.image_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"))
    if config.eval.every_steps < 0:
        raise ValueError(f"config.eval.every_steps={config.eval.every_steps} must be 0 (off) or positive.")
    validate_data(config.data)


def validate_data(data: ml_collections.ConfigDict) -> None:
    """The data section's own checks (shared by every stage that reads one)."""
    if data.name == "tfrecord" and not data.path:
        raise ValueError("config.data.name='tfrecord' needs config.data.path=<directory of {split}-*.tfrecord files>.")
    if data.name == "folder" and not data.path:
        raise ValueError("config.data.name='folder' needs config.data.path=<directory of JPEG/PNG images>.")


def suite_config() -> ml_collections.ConfigDict:
    """The base of the reproduction suites (configs/reproduce_*.py, run by launch/reproduce.py)."""
    c = ml_collections.ConfigDict()
    c.suite = ""                  # its name in the table
    c.methods = "simclr,byol,mocov2,mocov3,simsiam,barlow_twins,vicreg,supcon"   # comma-separated
    c.recipe = "configs/{method}_cifar10.py"   # each method's recipe, relative to the repository root
    c.pretrain = ml_collections.ConfigDict()   # keys set in every method's recipe (a relative data.path is
                                               # relative to the repository root)
    c.method_overrides = ml_collections.ConfigDict()   # <method>: keys set in that method's recipe, after these
    c.knn_every_epochs = 10.0     # periodic kNN during pretraining, for ROOT/knn_curve.png
    c.eval = eval_config()        # the kNN and linear-eval stages' config (linear eval runs in fast mode)
    c.eval.knn.ks = (200,)
    c.eval.knn.temperature = 0.07
    c.eval.linear.mode = "fast"
    c.eval.embedding_map_points = 0
    c.anchors = ml_collections.ConfigDict()    # <method>: published figures {knn, linear, source} (fractions)
    c.budget_minutes = 0.0        # > 0: the table says whether the suite ran within this wall time
    c.distributed = distributed_config()
    return c


def accelerator_suite(name: str, epochs: float, knn_every_epochs: float) -> ml_collections.ConfigDict:
    """A suite for GPUs and TPUs: views made on the accelerator, bfloat16 compute, the stages' linear eval sweep."""
    c = suite_config()
    c.suite = name
    c.pretrain.epochs = epochs
    c.pretrain.augment = {"on_device": True}
    c.pretrain.model = {"dtype": "bfloat16"}
    c.pretrain.eval = {"linear_probe": False}   # the suite's kNN and linear stages score every encoder
    c.knn_every_epochs = knn_every_epochs
    c.eval.linear.epochs = 90
    c.eval.linear.batch_size = 512
    c.eval.linear.learning_rates = (0.05, 0.1, 0.2, 0.4)
    return c
