"""Self-supervised pretraining: one method-agnostic loop over any registered method."""
from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sslx import config as config_lib
from sslx import data, metrics, optim, parallel, paths, plots, resume
from sslx import workdir as workdir_lib
from sslx.checkpoint import Checkpointer
from sslx.data import device_augment
from sslx.evaluators import baselines, periodic
from sslx.evaluators.features import extract_features
from sslx.evaluators.linear import linear_probe
from sslx.methods import Method, build_method
from sslx.train import TrainState, create_train_state, make_train_step


class NonFiniteLossError(FloatingPointError):
    pass


def epoch_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    """Optimizer steps per epoch of the training split (whole global batches)."""
    return max(num_examples // config.batch_size, 1)


def resolve_steps(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
    """(total_steps, warmup_steps) from explicit steps or from epochs of the training split."""
    steps_per_epoch = epoch_steps(config, num_examples)
    total = config.total_steps if config.total_steps > 0 else math.ceil(config.epochs * steps_per_epoch)
    warmup = (config.optim.warmup_steps if config.optim.warmup_steps >= 0
              else round(config.optim.warmup_epochs * steps_per_epoch))
    return total, min(warmup, total)


def check_finite(step: int, loss: float, checkpointer: Checkpointer) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) at step {step}; stopped without saving it, {checkpointer.last_good()}. "
            f"Lower config.optim.base_lr or use config.model.dtype='float32'.")


class Pretraining:
    """Everything built from the config before the first compile: errors surface here, not mid-run."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        config_lib.validate(config)
        self.config = config
        self.workdir = paths.as_path(workdir)
        self.mesh = parallel.make_mesh()
        parallel.check_divisible(config.batch_size, self.mesh.size)
        parallel.check_micro_batch(config.micro_batch_size, config.batch_size // self.mesh.size)
        self.train_info = data.describe(config.data, config.data.train_split)
        self.specs = data.spec_from_config(config.augment)
        self.view_sizes = config_lib.view_sizes(config.augment, config.data.image_size)
        self.total_steps, warmup = resolve_steps(config, self.train_info.num_examples)
        peak_lr = optim.peak_learning_rate(config.optim.base_lr, config.batch_size, config.optim.lr_scaling)
        self.schedule = optim.warmup_cosine(peak_lr, warmup, self.total_steps)
        self.method: Method = build_method(config, self.train_info.num_classes, self.total_steps,
                                           epoch_steps(config, self.train_info.num_examples))
        self.optimizer = self.method.optimizer(self.schedule)
        self.method.network(None)  # builds encoder/head: an unknown model name fails here
        self.init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
        self.on_device = bool(config.augment.get("on_device", False))
        if self.on_device:
            self.augment_rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # apart from init/step keys
            self.make_views = device_augment.make_views(self.specs, self.view_sizes, self.mesh)

    def initial_state(self) -> TrainState:
        size = self.config.data.image_size
        sample = jnp.zeros((2, size, size, 3), jnp.float32)
        state = jax.jit(create_train_state, static_argnums=(0, 1))(
            self.method, self.optimizer, self.init_rng, sample)
        return parallel.replicate(state, self.mesh)

    def feed(self, start_step: int, saved: dict) -> resume.Feed:
        """Sharded batches from where the checkpoint of `start_step` left the input (its `saved` data)."""
        stream = data.pretrain_iterator(
            self.config.data, self.specs, local_batch=self.config.batch_size // jax.process_count(),
            image_size=self.config.data.image_size, seed=self.config.seed, sizes=self.view_sizes,
            process_index=jax.process_index(),
            process_count=jax.process_count(), on_device=self.on_device,
            host_size=self.config.augment.get("host_size", 0), start=resume.stream_start(saved, "train"),
            first_batch=start_step)
        return resume.Feed({"train": stream}, lambda batches: parallel.shard_batch(batches["train"], self.mesh),
                           skipped_before=saved.get("skipped_records", 0))

    def device_views(self, batch: dict, step: int) -> dict:
        """The sharded batch with its views, made on the devices when config.augment.on_device."""
        if not self.on_device:
            return batch
        return {"views": self.make_views(jax.random.fold_in(self.augment_rng, step), batch["image"]),
                "label": batch["label"]}


def train(run: Pretraining, checkpointer: Checkpointer, writer: metrics.MetricWriter) -> tuple[TrainState, dict]:
    """Runs (or resumes) the loop to total_steps; returns the final state and last logged scalars."""
    config = run.config
    start, state, saved = resume.restore(checkpointer, run.initial_state(), writer)
    train_step = make_train_step(run.method, run.optimizer, run.schedule, run.mesh)
    evaluators = periodic.build(run)
    progress = metrics.Progress(run.total_steps, config.batch_size, first_step=start)
    feed = run.feed(start, saved)
    last: dict[str, float] = {}
    pending: tuple[int, jax.Array] | None = None
    with workdir_lib.StopSignals() as signals:
        for step in range(start + 1, run.total_steps + 1):
            batch = run.device_views(next(feed), step)
            state, step_metrics = train_step(state, batch, run.step_rng)
            # Checking the previous step's loss keeps one step in flight while still naming the exact step.
            if pending is not None:
                check_finite(pending[0], float(pending[1]), checkpointer)
            pending = (step, step_metrics["loss"])
            if step % config.log_every_steps == 0 or step == run.total_steps:
                last = metrics.to_python(step_metrics)
                check_finite(step, last["loss"], checkpointer)
                writer.write(step, last)
                metrics.log(progress.line(step, last["loss"]))
            if evaluators and step % config.eval.every_steps == 0:
                writer.write(step, periodic.run_all(evaluators, state))
            if step % config.checkpoint_every_steps == 0 or step == run.total_steps:
                check_finite(step, float(step_metrics["loss"]), checkpointer)
                checkpointer.save(step, state, force=step == run.total_steps, data=feed.checkpoint_data())
            resume.stop_here(signals, checkpointer, step, state, feed)
    last["skipped_records"] = feed.skipped_records
    return state, last


def probe_accuracy(run: Pretraining, encode: Callable[[jax.Array], jax.Array]) -> dict[str, float]:
    """Fast linear probe of `encode` (images -> features): fit on train-split features, report on the eval split."""
    config = run.config
    local_batch = parallel.round_up(config.eval.batch_size, run.mesh.size) // jax.process_count()

    def split_features(split: str, max_examples: int):
        batches = data.eval_iterator(config.data, split, local_batch=local_batch,
                                     image_size=config.data.image_size, max_examples=max_examples,
                                     process_index=jax.process_index(), process_count=jax.process_count())
        return extract_features(encode, batches, run.mesh)

    train_x, train_y = split_features(config.data.train_split, config.eval.probe_train_examples)
    test_x, test_y = split_features(config.data.eval_split, -1)
    return linear_probe(train_x, train_y, test_x, test_y, run.train_info.num_classes,
                        l2=config.eval.probe_l2, steps=config.eval.probe_steps)


def evaluate(run: Pretraining, state: TrainState) -> dict[str, float]:
    """Linear probe of the learned encoder next to two baselines on the same split and probe: the raw pixels
    (config.eval.pixel_probe_size > 0) and the encoder at a random initialisation."""
    if not (run.config.eval.linear_probe and run.train_info.num_classes > 0):
        return {}
    start = time.perf_counter()
    encoders = {"": lambda images: run.method.encode(state.params, state.batch_stats, images),
                "random_init_": baselines.random_init_encode(run.config.model, run.config.data.image_size,
                                                             run.init_rng)}
    if run.config.eval.pixel_probe_size > 0:
        encoders["pixels_"] = baselines.pixels_encode(run.config.eval.pixel_probe_size)
    results = {}
    for prefix, encode in encoders.items():
        top = probe_accuracy(run, encode)
        results.update({f"{prefix}linear_probe_top1": top["top1"], f"{prefix}linear_probe_top5": top["top5"]})
    compared = ", ".join(f"{name}: {results[f'{prefix}linear_probe_top1']:.4f}" for prefix, name in
                          (("random_init_", "random-init encoder"), ("pixels_", "raw pixels")) if prefix in encoders)
    metrics.log(f"linear probe top-1: {results['linear_probe_top1']:.4f} ({compared}) "
                f"in {time.perf_counter() - start:.0f} s")
    return results


def run_pretraining(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The `sslx-pretrain` stage: train, save, evaluate, write results.json; returns the results.

    Rerunning resumes from the newest readable checkpoint; a finished workdir returns its results unchanged."""
    run = Pretraining(config, workdir)
    with workdir_lib.open_run(run.workdir, config):
        finished = workdir_lib.finished_results(run.workdir, "step", run.total_steps)
        if finished is not None:
            return finished
        metrics.log(f"pretraining {config.method} {config.model.name} on {config.data.name}: "
                    f"{run.total_steps} steps at global batch {config.batch_size} on {run.mesh.size} devices")
        checkpointer = Checkpointer(run.workdir, keep=config.keep_checkpoints,
                                    every_steps=config.checkpoint_every_steps)
        writer = metrics.MetricWriter(run.workdir)
        plots.write_augmentation_preview(config, run.workdir, writer)
        start = time.perf_counter()
        try:
            state, last = train(run, checkpointer, writer)
        finally:
            checkpointer.close()
            writer.close()
        results = {"stage": "pretrain", "method": config.method, "model": config.model.name,
                   "dataset": config.data.name, "step": int(jax.device_get(state.step)),
                   "total_steps": run.total_steps, "batch_size": config.batch_size,
                   "train_seconds": round(time.perf_counter() - start, 1), **last}
        evaluation = evaluate(run, state)
        results.update(evaluation)
        metrics.write_once(run.workdir, results["step"], evaluation)  # the probe beside the curves (jsonl and TB)
        plots.write_curves(run.workdir)
        path = metrics.write_results(run.workdir, results)
    metrics.log(f"wrote {path}")
    return results
