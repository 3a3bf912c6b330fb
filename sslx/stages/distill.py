"""`sslx-distill`: distil a fine-tuned classifier (the teacher) into a student on the unlabelled training set.

SimCLRv2 (Chen et al. 2020b, sec. 2): the student minimises tau^2 x CE(softmax(t / tau), softmax(s / tau)) on every
training image, labels unused (`sslx.losses.distillation`), optionally plus `supervised_weight` x the labelled
cross-entropy on a `label_fraction` subset (drawn as sslx-finetune draws it). Self-distillation keeps the teacher's
encoder, big-to-small distillation names a smaller `config.student.model`; the student has no head layers and
starts from scratch or from the encoder of `config.student.pretrained`. Random crop + flip, LARS, the pretraining's
schedule, 400 epochs; tau = 0.1 for self-distillation and 1.0 big-to-small in the paper.

The teacher runs frozen in eval mode inside the same data-parallel step (its variables a separate replicated
argument: they are never checkpointed with the student), or its logits come from a .npy of the train split
written by `config.distill.precompute=True` (then the student sees centre crops with random flips, the views
those logits were computed on).

The workdir is a classifier workdir like sslx-finetune's (model, head, head_layers=0, num_classes), so a
distilled student can be evaluated or serve as the next teacher.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax import lax
from jax.sharding import Mesh

from sslx import data, losses, metrics, optim, parallel, paths, resume
from sslx import workdir as workdir_lib
from sslx.checkpoint import Checkpointer
from sslx.evaluators import common, subsets
from sslx.evaluators.encoders import Trained, build_classifier, load_classifier, load_pretrained
from sslx.evaluators.features import split_features
from sslx.models import network_variables, stats_of
from sslx.parallel import BATCH_AXIS
from sslx.train import TrainState, make_step, new_state

LOGITS_FILE = "teacher_logits.npy"
RUN_LENGTH_KEYS = ("distill.epochs", "distill.total_steps")


def validate(config: ml_collections.ConfigDict) -> None:
    cfg = config.distill
    if not config.teacher:
        raise ValueError("config.teacher is required: pass --config.teacher=FINETUNE_WORKDIR")
    if cfg.temperature <= 0:
        raise ValueError(f"config.distill.temperature={cfg.temperature} must be positive")
    if cfg.supervised_weight < 0:
        raise ValueError(f"config.distill.supervised_weight={cfg.supervised_weight} must be 0 (off) or positive")
    subsets.check_fraction(cfg.label_fraction, "config.distill.label_fraction")
    common.check_loop_keys(cfg, "distill")
    if cfg.labelled_batch_size <= 0:
        raise ValueError(f"config.distill.labelled_batch_size={cfg.labelled_batch_size} must be positive")
    if cfg.total_steps <= 0 and cfg.epochs <= 0:
        raise ValueError("set config.distill.total_steps or config.distill.epochs to a positive number")


def student_config(config: ml_collections.ConfigDict, teacher: ml_collections.ConfigDict,
                   pretrained: ml_collections.ConfigDict | None, data_cfg) -> ml_collections.ConfigDict:
    """The config.json of the distilled workdir: this run's config plus what rebuilds the student."""
    base = pretrained if pretrained is not None else teacher
    model = config.student.model if config.student.model.name else base.model
    if pretrained is not None and model.to_dict() != pretrained.model.to_dict():
        raise ValueError(f"config.student.model ({model.name}) differs from the model of config.student.pretrained="
                         f"{config.student.pretrained} ({pretrained.model.name}): leave config.student.model.name "
                         f"empty to take the pretrained one")
    recorded = ml_collections.ConfigDict(config.to_dict())
    recorded.data = ml_collections.ConfigDict(data_cfg.to_dict())
    recorded.model = ml_collections.ConfigDict(model.to_dict())
    recorded.head = ml_collections.ConfigDict(base.head.to_dict())
    recorded.head_layers = 0
    recorded.num_classes = teacher.num_classes
    return recorded


def make_distill_step(student, teacher, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                      mesh: Mesh, *, temperature: float,
                      supervised_weight: float) -> Callable[[TrainState, dict, Any], tuple[TrainState, dict]]:
    """`(state, batch, teacher_variables) -> (state, metrics)`, data-parallel (see sslx.train.make_step).

    `batch`: 'image' (unlabelled) and either the teacher's 'teacher_logits' or, with `teacher` a network, its
    frozen eval-mode logits computed here; with `supervised_weight` > 0 also 'labelled_image' and 'label'.
    """

    def loss_fn(params: Any, state: TrainState, batch: dict, teacher_variables: Any):
        if teacher is None:
            targets = batch["teacher_logits"]
        else:
            targets = teacher.apply(teacher_variables, batch["image"], train=False)
        targets = lax.stop_gradient(targets)
        images = batch["image"]
        if supervised_weight > 0:
            # One pass over both batches: the student's BN statistics cover labelled and unlabelled images alike.
            images = jnp.concatenate([images, batch["labelled_image"]])
        unlabelled = batch["image"].shape[0]
        logits, updates = student.apply(network_variables(params, state.batch_stats), images,
                                        train=True, mutable=["batch_stats"])
        terms = {"distill_loss": losses.distillation(logits[:unlabelled], targets, temperature=temperature)}
        if supervised_weight > 0:
            terms["supervised_loss"] = losses.softmax_cross_entropy(logits[unlabelled:], batch["label"])
        loss = terms["distill_loss"] + supervised_weight * terms.get("supervised_loss", 0.0)
        agreement = jnp.mean(jnp.argmax(logits[:unlabelled], -1) == jnp.argmax(targets, -1))
        return loss, (stats_of(updates), {**terms, "teacher_agreement": agreement}, {})

    return make_step(loss_fn, optimizer, mesh, schedule=schedule, num_inputs=1)


def precompute_teacher_logits(teacher: Trained, data_cfg, mesh: Mesh, batch_size: int,
                              path: epath.Path) -> epath.Path:
    """Writes the teacher's eval-mode logits of every train-split centre crop, in read order, to `path`."""
    if jax.process_count() > 1:
        raise ValueError("config.distill.precompute runs in a single process: each process sees only its shard")
    logits, _ = split_features(teacher.predict_fn(), data_cfg, data_cfg.train_split, mesh, batch_size)
    paths.save_array(path, logits.astype(np.float32))
    metrics.log(f"wrote teacher logits {logits.shape} of {data_cfg.name}:{data_cfg.train_split} to {path}")
    return path


class Distillation:
    """Everything built before the first compile: teacher, student architecture, data, schedule, optimizer."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate(config)
        self.config = config
        self.workdir = paths.as_path(workdir)
        cfg = config.distill
        self.mesh = parallel.make_mesh()
        parallel.check_divisible(cfg.batch_size, self.mesh.size, "config.distill.batch_size")
        self.teacher = load_classifier(config.teacher, config.teacher_step, self.mesh)
        self.data = common.data_config(config, self.teacher.config)
        self.num_train = data.describe(self.data, self.data.train_split).num_examples
        self.pretrained = None
        if config.student.pretrained:
            self.pretrained = load_pretrained(config.student.pretrained, None, self.mesh, "config.student.pretrained")
        self.recorded = student_config(config, self.teacher.config,
                                       self.pretrained.config if self.pretrained else None, self.data)
        self.recorded.teacher_step = self.teacher.step
        self.logits = self.teacher_logits()
        self.labelled, self.indices, self.num_labelled, self.subset = None, None, 0, None
        if cfg.supervised_weight > 0:
            parallel.check_divisible(cfg.labelled_batch_size, self.mesh.size, "config.distill.labelled_batch_size")
            self.subset = common.labelled_subset(self.data, cfg.label_fraction, cfg.subset_seed)
            self.labelled, self.indices, self.num_labelled = self.subset.data, self.subset.indices, self.subset.count
        per_epoch = optim.steps_per_epoch(self.num_train, cfg.batch_size)
        self.total_steps = optim.run_steps(cfg.total_steps, cfg.epochs, per_epoch)
        self.schedule = optim.schedule_from_config(cfg.optim, cfg.batch_size, self.total_steps, per_epoch)
        self.optimizer = optim.make_optimizer(cfg.optim, self.schedule, total_steps=self.total_steps)

    def teacher_logits(self) -> np.ndarray | None:
        """The precomputed logits (memory-mapped), checked against the train split, or None for the online teacher."""
        path = self.config.distill.teacher_logits
        if not path:
            return None
        if not paths.as_path(path).is_file():
            raise FileNotFoundError(f"config.distill.teacher_logits={path} does not exist: write it with "
                                    f"--config.distill.precompute=True")
        logits = paths.load_array(path)
        expected = (self.num_train, self.teacher.config.num_classes)
        if logits.shape != expected:
            raise ValueError(f"config.distill.teacher_logits={path} has shape {logits.shape}, the train split and "
                             f"teacher need {expected}")
        return logits

    def initial_state(self) -> TrainState:
        """Fresh student; its encoder from config.student.pretrained when given."""
        params, batch_stats = common.classifier_variables(self.recorded, self.config.seed, self.pretrained)
        return parallel.replicate(new_state(params, batch_stats, self.optimizer), self.mesh)

    def feed(self, start_step: int, saved: dict) -> resume.Feed:
        """Sharded step inputs, from where the checkpoint of `start_step` left each input stream."""
        cfg = self.config.distill
        if self.logits is None:
            unlabelled = common.labelled_batches(self.data, self.data.train_split, None, cfg.batch_size,
                                                 self.config.seed, start=resume.stream_start(saved, "unlabelled"),
                                                 first_batch=start_step)
        else:
            unlabelled = data.indexed_iterator(
                self.data, self.data.train_split, local_batch=cfg.batch_size // jax.process_count(),
                image_size=self.data.image_size, seed=self.config.seed, process_index=jax.process_index(),
                process_count=jax.process_count(), start=resume.stream_start(saved, "unlabelled"))
        streams = {"unlabelled": unlabelled}
        if self.labelled is not None:
            streams["labelled"] = common.labelled_batches(
                self.labelled, self.labelled.train_split, self.indices, cfg.labelled_batch_size,
                self.config.seed + 1, start=resume.stream_start(saved, "labelled"), first_batch=start_step)
        return resume.Feed(streams, self._step_inputs, skipped_before=saved.get("skipped_records", 0))

    def _step_inputs(self, batches: dict[str, dict]) -> dict:
        inputs = {"image": batches["unlabelled"]["image"]}
        if self.logits is not None:
            inputs["teacher_logits"] = np.asarray(self.logits[batches["unlabelled"]["index"]])
        if "labelled" in batches:
            inputs.update(labelled_image=batches["labelled"]["image"], label=batches["labelled"]["label"])
        return parallel.shard_batch(inputs, self.mesh)

    def step_fn(self) -> Callable:
        teacher = None if self.logits is not None else self.teacher.network
        return make_distill_step(build_classifier(self.recorded, BATCH_AXIS), teacher, self.optimizer,
                                 self.schedule, self.mesh, temperature=self.config.distill.temperature,
                                 supervised_weight=self.config.distill.supervised_weight)

    def teacher_variables(self) -> Any:
        return {} if self.logits is not None else self.teacher.variables

    def evaluate(self, state: TrainState) -> dict[str, float]:
        return common.classifier_accuracy(self.recorded, state.params, state.batch_stats, self.data, self.mesh,
                                          self.config.eval_batch_size)


def train(run: Distillation, checkpointer: Checkpointer, writer: metrics.MetricWriter) -> TrainState:
    """Runs (or resumes) distillation to total_steps; returns the final student state."""
    step_fn, teacher_variables = run.step_fn(), run.teacher_variables()
    return resume.train_loop(
        run.initial_state(), lambda state, batch, step: step_fn(state, batch, teacher_variables), run.feed,
        checkpointer, writer, run.config.distill, total_steps=run.total_steps,
        hint="Lower config.distill.optim.base_lr.",
        describe=lambda scalars: f"  agreement {scalars['teacher_agreement']:.3f}")[0]


def teacher_top1(teacher: Trained) -> float | None:
    """The teacher's own reported top-1 (its results.json), for the student's results."""
    path = teacher.workdir / "results.json"
    return json.loads(path.read_text(encoding="utf-8")).get("top1") if path.is_file() else None


def run_distill(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `sslx-distill` stage: distil, save, report top-1/top-5 on the eval split in results.json.

    With config.distill.precompute it only writes WORKDIR/teacher_logits.npy and returns {'teacher_logits': path}.
    """
    started = time.perf_counter()
    run = Distillation(config, workdir)
    cfg = config.distill
    if cfg.precompute:
        path = precompute_teacher_logits(run.teacher, run.data, run.mesh, config.eval_batch_size,
                                         run.workdir / LOGITS_FILE)
        return {"teacher_logits": str(path)}
    with workdir_lib.open_run(run.workdir, run.recorded, RUN_LENGTH_KEYS):
        finished = workdir_lib.finished_results(run.workdir, "step", run.total_steps)
        if finished is not None:
            return finished
        if run.subset is not None:
            run.subset.write(run.workdir)
        metrics.log(f"distilling {run.teacher.workdir} ({run.teacher.config.model.name}) into "
                    f"{run.recorded.model.name} x{run.recorded.model.width} on {run.num_train} images of "
                    f"{run.data.name}: {run.total_steps} steps at batch {cfg.batch_size}")
        state = resume.train_with_sinks(run.workdir, cfg, lambda checkpointer, writer: train(run, checkpointer, writer))
        results = {"stage": "distill", "teacher": str(run.teacher.workdir), "teacher_step": run.teacher.step,
                   "teacher_model": run.teacher.config.model.name, "teacher_top1": teacher_top1(run.teacher),
                   "model": run.recorded.model.name, "width": run.recorded.model.width,
                   "student_pretrained": config.student.pretrained, "step": run.total_steps,
                   "split": run.data.eval_split, "num_labelled": run.num_labelled,
                   "temperature": cfg.temperature, "supervised_weight": cfg.supervised_weight,
                   "precomputed_logits": cfg.teacher_logits}
        results.update(run.evaluate(state))
        return common.finish(run.workdir, results, started)
