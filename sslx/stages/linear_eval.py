"""`sslx-linear-eval`: a linear classifier on the frozen features of a pretrained encoder.

protocol: the papers' recipe. Every step pushes random crop + flip views (crop area in
  [config.linear.crop_area_min, 1]) through the frozen encoder (eval-mode BN) and takes a momentum-SGD step on
  the classifier, data-parallel over the mesh, in the stages' resumable loop: each classifier checkpoints under
  WORKDIR/classifiers/<rate, split, hash of the encoder and config>/, so a stopped run continues where it left off
  (SIGTERM included) and a finished one is not retrained.
fast: features of centre crops are extracted once, sharded over the devices, and the classifier trains on the
  cached features with the same optimizer, batch and epochs (or by full-batch L-BFGS).
With several learning rates, each is trained on train minus a held-out class-balanced split, the best on that
split retrains on all of train, and the test split is reported.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from jax import lax
from jax.sharding import Mesh

from sslx import data, metrics, parallel, paths, plots, resume
from sslx import workdir as workdir_lib
from sslx.evaluators import baselines, common, linear, subsets
from sslx.evaluators.encoders import check_head_layer, load_pretrained
from sslx.train import TrainState, make_step, new_state

MODES = ("protocol", "fast")
SOLVERS = ("sgd", "lbfgs")
# Keys that change neither a classifier nor its data: a rerun with other values continues the same checkpoints.
NOT_TRAINING_KEYS = ("eval_batch_size", "features_dir", "embedding_map_points", "distributed")
LOOP_KEYS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints")   # of config.linear, likewise


def validate(config: ml_collections.ConfigDict) -> None:
    if not config.pretrained:
        raise ValueError("config.pretrained is required: pass --config.pretrained=PRETRAIN_WORKDIR")
    if config.linear.mode not in MODES:
        raise ValueError(f"config.linear.mode={config.linear.mode!r} is not one of {MODES}")
    if config.linear.solver not in SOLVERS:
        raise ValueError(f"config.linear.solver={config.linear.solver!r} is not one of {SOLVERS}")
    if not config.linear.learning_rates or min(config.linear.learning_rates) <= 0:
        raise ValueError(f"config.linear.learning_rates={config.linear.learning_rates} must be positive numbers")
    if not 0 < config.linear.crop_area_min <= 1:
        raise ValueError(f"config.linear.crop_area_min={config.linear.crop_area_min} must lie in (0, 1] "
                         "(0.08: SimCLR's crops; 1: flips only)")
    if config.linear.epochs <= 0:
        raise ValueError(f"config.linear.epochs={config.linear.epochs} must be positive")
    common.check_loop_keys(config.linear, "linear")
    baselines.check_baseline(config)


def make_probe_step(apply: Callable, standardize: Callable, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> Callable[[TrainState, dict, Any], tuple[TrainState, dict]]:
    """`(state, batch, variables) -> (state, metrics)` of the linear classifier (state.params) on the frozen,
    standardised features `apply(variables, images)`, data-parallel (see sslx.train.make_step).

    The encoder variables are an input, not a closure: closed-over arrays would be baked into the program.
    """

    def loss_fn(classifier: Any, state: TrainState, batch: dict, variables: Any):
        del state
        features = standardize(lax.stop_gradient(apply(variables, batch["image"])))
        return linear.classifier_loss(classifier, features, batch["label"]), ({}, {}, {})

    return make_step(loss_fn, optimizer, mesh, num_inputs=1)


class LinearEval:
    """The frozen encoder, the data and the cached eval-preprocessed features the classifiers are scored on."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate(config)
        self.config = config
        self.workdir = paths.as_path(workdir)
        self.mesh = parallel.make_mesh()
        parallel.check_divisible(config.linear.batch_size, self.mesh.size, "config.linear.batch_size")
        self.pretrained = load_pretrained(config.pretrained, config.step, self.mesh)
        check_head_layer(self.pretrained.config, config.head_layer, "config.head_layer")
        self.apply, self.variables = baselines.frozen_features(config, self.pretrained, self.mesh)
        self.data = common.data_config(config, self.pretrained.config)
        self.info = common.check_labelled(self.data, self.data.train_split)
        self.num_classes = self.info.num_classes

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        fn = lambda images: self.apply(self.variables, images)  # noqa: E731
        return common.stage_features(fn, self.digest, self.config, self.pretrained, self.data, split, self.mesh)

    @functools.cached_property
    def digest(self) -> str:
        """The frozen network's `variables_digest`, hashed once for the saved features and the classifiers' names."""
        return common.variables_digest(self.variables)

    def fit_standardizer(self, train_features: np.ndarray) -> None:
        """Per-dimension standardisation with train-split statistics, shared by both modes: SGD's learning rate
        then means the same for every encoder, whatever the scale of its features."""
        mean = train_features.mean(0)
        std = train_features.std(0) + 1e-6
        self.standardize = lambda x: (x - mean) / std  # noqa: E731

    def optimizer(self, base_lr: float, num_train: int) -> optax.GradientTransformation:
        cfg = self.config.linear
        return linear.classifier_optimizer(base_lr * cfg.batch_size / 256, self.total_steps(num_train),
                                           momentum=cfg.momentum, nesterov=cfg.nesterov,
                                           weight_decay=cfg.weight_decay)

    def total_steps(self, num_train: int) -> int:
        return self.config.linear.epochs * (num_train // self.config.linear.batch_size)

    def feature_dim(self) -> int:
        size = self.data.image_size
        images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
        return jax.eval_shape(lambda x: self.apply(self.variables, x), images).shape[1]

    def classifier_dir(self, base_lr: float, held_out: bool) -> epath.Path:
        """Where the classifier of `base_lr` trained on train less the held-out split (or on all of train)
        checkpoints: named by everything it depends on, so a rerun continues only its own run."""
        setup = {k: v for k, v in self.config.to_dict().items() if k not in NOT_TRAINING_KEYS}
        setup["linear"] = {k: v for k, v in setup["linear"].items() if k not in LOOP_KEYS}
        key = json.dumps({"variables": self.digest, "config": setup,
                          "data": self.data.to_dict(), "rate": base_lr, "held_out": held_out},
                         sort_keys=True, default=str)
        name = f"lr{base_lr:g}-{'fit' if held_out else 'train'}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        return self.workdir / "classifiers" / name

    def train_protocol(self, indices: np.ndarray | None, num_train: int, base_lr: float) -> dict[str, jax.Array]:
        """Classifier trained on augmented crops of `indices` (None: all of train) through the frozen encoder, in
        the resumable loop with checkpoints under `classifier_dir`."""
        cfg = self.config.linear
        optimizer = self.optimizer(base_lr, num_train)
        step_fn = make_probe_step(self.apply, self.standardize, optimizer, self.mesh)
        classifier = linear.init_classifier(self.feature_dim(), self.num_classes)
        state = parallel.replicate(new_state(classifier, {}, optimizer), self.mesh)

        def feed(start_step: int, saved: dict) -> resume.Feed:
            stream = common.labelled_batches(self.data, self.data.train_split, indices, cfg.batch_size,
                                             self.config.seed, spec=data.crop_flip_spec(cfg.crop_area_min),
                                             start=resume.stream_start(saved, "train"), first_batch=start_step)
            return resume.Feed({"train": stream}, lambda batches: parallel.shard_batch(
                {"image": batches["train"]["image"], "label": batches["train"]["label"]}, self.mesh),
                skipped_before=saved.get("skipped_records", 0))

        def train(checkpointer, writer):
            return resume.train_loop(state, lambda s, batch, step: step_fn(s, batch, self.variables), feed,
                                     checkpointer, writer, cfg, total_steps=self.total_steps(num_train),
                                     hint="Lower config.linear.learning_rates.")[0]

        directory = self.classifier_dir(base_lr, held_out=indices is not None)
        directory.mkdir(parents=True, exist_ok=True)
        return resume.train_with_sinks(directory, cfg, train).params

    def train_fast(self, features: np.ndarray, labels: np.ndarray, base_lr: float) -> dict[str, jax.Array]:
        cfg = self.config.linear
        if cfg.solver == "lbfgs":
            fit = jax.jit(linear.fit_logistic_regression, static_argnames=("num_classes", "steps"))
            return fit(features, labels, self.num_classes, l2=cfg.lbfgs_l2, steps=cfg.lbfgs_steps)
        return linear.sgd_on_features(features, labels, self.num_classes, self.optimizer(base_lr, len(labels)),
                                      batch_size=cfg.batch_size, epochs=cfg.epochs, seed=self.config.seed)


def select_learning_rate(run: LinearEval, train: tuple[np.ndarray, np.ndarray]) -> tuple[float, dict[str, float]]:
    """The learning rate with the best top-1 on a held-out part of train, and every rate's score."""
    rates = list(run.config.linear.learning_rates)
    if len(rates) == 1:
        return rates[0], {}
    features, labels = train
    fit, held = subsets.split_off(np.arange(len(labels)), labels, run.config.linear.val_fraction, run.config.seed)
    scores = {}
    for rate in rates:
        if run.config.linear.mode == "fast":
            classifier = run.train_fast(features[fit], labels[fit], rate)
        else:
            classifier = run.train_protocol(fit, len(fit), rate)
        scores[f"val_top1_lr{rate:g}"] = linear.classifier_accuracy(classifier, features[held], labels[held])["top1"]
        metrics.log(f"learning rate {rate:g}: validation top-1 {scores[f'val_top1_lr{rate:g}']:.4f}")
    return max(rates, key=lambda r: scores[f"val_top1_lr{r:g}"]), scores


def run_linear_eval(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `sslx-linear-eval` stage: writes results.json (top-1/top-5 on the eval split) and returns it."""
    started = time.perf_counter()
    workdir_lib.check_writable(workdir)  # before the features: a bad --workdir costs nothing
    lock = workdir_lib.Lock(workdir)     # the protocol's classifiers checkpoint in it: one run at a time
    try:
        return linear_eval(LinearEval(config, workdir), started)
    finally:
        lock.release()


def linear_eval(run: LinearEval, started: float) -> dict[str, Any]:
    config, workdir, cfg = run.config, run.workdir, run.config.linear
    metrics.log(f"linear eval ({cfg.mode}) of {common.features_title(config, run.pretrained)} "
                f"({run.pretrained.workdir}) on "
                f"{run.data.name}: {cfg.epochs} epochs, batch {cfg.batch_size}, rates {tuple(cfg.learning_rates)}")
    features, labels = run.features(run.data.train_split)
    run.fit_standardizer(features)
    train = (np.asarray(run.standardize(features)), labels)
    rate, sweep = select_learning_rate(run, train)
    if cfg.mode == "fast":
        classifier = run.train_fast(*train, rate)
    else:
        classifier = run.train_protocol(None, run.info.num_examples, rate)
    test_features, test_labels = run.features(run.data.eval_split)
    test_features = np.asarray(run.standardize(test_features))
    title = common.features_title(config, run.pretrained)
    plots.write_embedding_map(workdir, test_features, test_labels, title, step=run.pretrained.step,
                              max_points=config.embedding_map_points,
                              class_names=data.class_names(run.data, run.data.eval_split))
    results = common.base_results("linear_eval", run.pretrained, run.data.eval_split, run.info.num_examples,
                                  config.baseline)
    results.update(linear.classifier_accuracy(classifier, test_features, test_labels), mode=cfg.mode,
                   learning_rate=float(rate), epochs=cfg.epochs, **sweep)
    return common.finish(workdir, results, started)
