"""`sslx-finetune`: fine-tune a pretrained encoder (optionally with its first head layers) on a fraction of labels.

SimCLRv2's semi-supervised recipe (Chen et al. 2020b, sec. 3): the classifier sits on the encoder, or on the
output of projection-head layer `head_layers` (v2 keeps layer 1); everything trains with LARS at 0.005 x
sqrt(batch), no weight decay, global BN, 60 epochs on 1% and 30 on 10% of ImageNet's labels. ImageNet's 1% and
10% are the TFDS imagenet2012_subset lists (SimCLR's); any other data set gets a class-balanced subset drawn
with `config.finetune.subset_seed`, listed in `<workdir>/label_subset.json`.

The workdir is a classifier workdir: config.json records the architecture, `head_layers` and `num_classes`
(`sslx.evaluators.encoders.build_classifier` rebuilds the network), checkpoints hold the train state.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from sslx import metrics, optim, parallel, paths, resume
from sslx import workdir as workdir_lib
from sslx.checkpoint import Checkpointer
from sslx.evaluators import common, subsets
from sslx.evaluators.encoders import Trained, build_classifier, check_head_layer, load_pretrained
from sslx.losses import softmax_cross_entropy
from sslx.models import network_variables, stats_of
from sslx.parallel import BATCH_AXIS
from sslx.train import TrainState, make_step, new_state

RUN_LENGTH_KEYS = ("finetune.epochs",)


def validate(config: ml_collections.ConfigDict) -> None:
    if not config.pretrained:
        raise ValueError("config.pretrained is required: pass --config.pretrained=PRETRAIN_WORKDIR")
    subsets.check_fraction(config.finetune.label_fraction, "config.finetune.label_fraction")
    common.check_loop_keys(config.finetune, "finetune")


def default_epochs(label_fraction: float) -> float:
    return 60.0 if label_fraction <= 0.01 else 30.0


def record_config(config: ml_collections.ConfigDict, pretrained: Trained, data_cfg,
                  num_classes: int) -> ml_collections.ConfigDict:
    """The config.json of the fine-tuned workdir: this run's config plus what rebuilds its network."""
    recorded = ml_collections.ConfigDict(config.to_dict())
    recorded.data = ml_collections.ConfigDict(data_cfg.to_dict())
    recorded.model = ml_collections.ConfigDict(pretrained.config.model.to_dict())
    recorded.head = ml_collections.ConfigDict(pretrained.config.head.to_dict())
    recorded.head_layers = config.finetune.head_layers
    recorded.num_classes = num_classes
    recorded.pretrained_step = pretrained.step
    return recorded


def finetune_optimizer(optim_cfg, schedule: optax.Schedule, total_steps: int) -> optax.GradientTransformation:
    """`optim_cfg`'s optimizer for the network, plain momentum SGD without weight decay for the new classifier.

    SimCLR excludes the supervised head from LARS adaptation and weight decay: the classifier starts at zero, and
    a trust ratio proportional to its norm would keep it there.
    """
    labels = lambda params: {name: jax.tree.map(lambda _: "classifier" if name == "classifier" else "network",  # noqa: E731
                                                subtree) for name, subtree in params.items()}
    return optax.multi_transform({"network": optim.make_optimizer(optim_cfg, schedule, total_steps=total_steps),
                                  "classifier": optax.sgd(schedule, momentum=optim_cfg.momentum)}, labels)


def make_finetune_step(network, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                       mesh: Mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`(state, batch) -> (state, metrics)`: cross-entropy of the global batch (see sslx.train.make_step)."""

    def loss_fn(params: Any, state: TrainState, batch: dict):
        logits, updates = network.apply(network_variables(params, state.batch_stats), batch["image"],
                                        train=True, mutable=["batch_stats"])
        top1 = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return softmax_cross_entropy(logits, batch["label"]), (stats_of(updates), {"train_top1": top1}, {})

    return make_step(loss_fn, optimizer, mesh, schedule=schedule)


class FineTuning:
    """Everything built before the first compile: the encoder, the labelled subset, schedule and optimizer."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate(config)
        self.config = config
        self.workdir = paths.as_path(workdir)
        cfg = config.finetune
        self.mesh = parallel.make_mesh()
        parallel.check_divisible(cfg.batch_size, self.mesh.size, "config.finetune.batch_size")
        self.pretrained = load_pretrained(config.pretrained, config.step, self.mesh)
        check_head_layer(self.pretrained.config, cfg.head_layers, "config.finetune.head_layers")
        self.data = common.data_config(config, self.pretrained.config)
        self.num_classes = common.check_labelled(self.data, self.data.train_split).num_classes
        self.subset = common.labelled_subset(self.data, cfg.label_fraction, cfg.subset_seed)
        self.train_data, self.indices, self.num_labelled = self.subset.data, self.subset.indices, self.subset.count
        epochs = cfg.epochs if cfg.epochs > 0 else default_epochs(cfg.label_fraction)
        # Epochs count the last partial batch: few labels at a big batch still take a step per epoch's examples.
        self.total_steps = max(math.ceil(epochs * self.num_labelled / cfg.batch_size), 1)
        self.schedule = optim.schedule_from_config(cfg.optim, cfg.batch_size, self.total_steps,
                                                   optim.steps_per_epoch(self.num_labelled, cfg.batch_size))
        self.optimizer = finetune_optimizer(cfg.optim, self.schedule, self.total_steps)
        self.recorded = record_config(config, self.pretrained, self.data, self.num_classes)

    def initial_state(self) -> TrainState:
        """Fresh classifier; encoder and the kept head layers from the pretrained checkpoint."""
        params, batch_stats = common.classifier_variables(self.recorded, self.config.seed, self.pretrained)
        return parallel.replicate(new_state(params, batch_stats, self.optimizer), self.mesh)

    def feed(self, start_step: int, saved: dict) -> resume.Feed:
        """Sharded labelled batches, from where the checkpoint of `start_step` left the input."""
        stream = common.labelled_batches(self.train_data, self.train_data.train_split, self.indices,
                                         self.config.finetune.batch_size, self.config.seed,
                                         start=resume.stream_start(saved, "labelled"), first_batch=start_step)
        return resume.Feed({"labelled": stream}, lambda batches: parallel.shard_batch(
            {"image": batches["labelled"]["image"], "label": batches["labelled"]["label"]}, self.mesh),
            skipped_before=saved.get("skipped_records", 0))

    def evaluate(self, state: TrainState) -> dict[str, float]:
        return common.classifier_accuracy(self.recorded, state.params, state.batch_stats, self.data, self.mesh,
                                          self.config.eval_batch_size)


def train(run: FineTuning, checkpointer: Checkpointer, writer: metrics.MetricWriter) -> TrainState:
    """Runs (or resumes) fine-tuning to total_steps; returns the final state."""
    step_fn = make_finetune_step(build_classifier(run.recorded, BATCH_AXIS), run.optimizer, run.schedule, run.mesh)
    return resume.train_loop(run.initial_state(), lambda state, batch, step: step_fn(state, batch), run.feed,
                             checkpointer, writer, run.config.finetune, total_steps=run.total_steps,
                             hint="Lower config.finetune.optim.base_lr.")[0]


def run_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `sslx-finetune` stage: fine-tune, save, report top-1/top-5 on the eval split in results.json."""
    started = time.perf_counter()
    run = FineTuning(config, workdir)
    cfg = config.finetune
    with workdir_lib.open_run(run.workdir, run.recorded, RUN_LENGTH_KEYS):
        finished = workdir_lib.finished_results(run.workdir, "finetune_steps", run.total_steps)
        if finished is not None:
            return finished
        run.subset.write(run.workdir)
        metrics.log(f"fine-tuning {run.pretrained.workdir} step {run.pretrained.step} (+{cfg.head_layers} head "
                    f"layers) on {run.num_labelled} labels of {run.train_data.name}: {run.total_steps} steps at "
                    f"batch {cfg.batch_size}")
        state = resume.train_with_sinks(run.workdir, cfg, lambda checkpointer, writer: train(run, checkpointer, writer))
        results = common.base_results("finetune", run.pretrained, run.data.eval_split, run.num_labelled)
        results.update(run.evaluate(state), label_fraction=cfg.label_fraction, head_layers=cfg.head_layers,
                       finetune_steps=run.total_steps)
        return common.finish(run.workdir, results, started)
