"""Self-supervised pretraining: one method-agnostic loop over any registered method."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections

from sslx import config as config_lib
from sslx import data, metrics, optim, parallel, paths, plots, resume
from sslx import workdir as workdir_lib
from sslx.checkpoint import Checkpointer
from sslx.data import device_augment
from sslx.evaluators import baselines, periodic
from sslx.evaluators.features import Encode
from sslx.evaluators.linear import LinearProbe
from sslx.methods import Method, build_method
from sslx.train import TrainState, create_train_state, make_train_step


# What a non-finite loss asks of the user.
NON_FINITE_HINT = "Lower config.optim.base_lr or use config.model.dtype='float32'."


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
        per_epoch = optim.steps_per_epoch(self.train_info.num_examples, config.batch_size)
        self.total_steps = optim.run_steps(config.total_steps, config.epochs, per_epoch)
        self.schedule = optim.schedule_from_config(config.optim, config.batch_size, self.total_steps, per_epoch)
        self.method: Method = build_method(config, self.train_info.num_classes, self.total_steps, per_epoch)
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

    def encoder(self, state: TrainState) -> Encode:
        """The encoder of `state` in eval mode, as the evaluators take it."""
        return lambda images: self.method.encode(state.params, state.batch_stats, images)

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
    evaluators = periodic.build(config, run.mesh, run.train_info.num_classes)
    train_step = make_train_step(run.method, run.optimizer, run.schedule, run.mesh)
    return resume.train_loop(
        run.initial_state(), lambda state, batch, step: train_step(state, run.device_views(batch, step), run.step_rng),
        run.feed, checkpointer, writer, config, total_steps=run.total_steps, hint=NON_FINITE_HINT,
        evaluate=lambda state: periodic.run_all(evaluators, run.encoder(state)),
        evaluate_every=config.eval.every_steps if evaluators else 0)


def evaluate(run: Pretraining, state: TrainState) -> dict[str, float]:
    """Linear probe of the learned encoder next to two baselines on the same split and probe: the raw pixels
    (config.eval.pixel_probe_size > 0) and the encoder at a random initialisation."""
    if not (run.config.eval.linear_probe and run.train_info.num_classes > 0):
        return {}
    start = time.perf_counter()
    encoders = {"": run.encoder(state),
                "random_init_": baselines.random_init_encode(run.config.model, run.config.data.image_size,
                                                             run.init_rng)}
    if run.config.eval.pixel_probe_size > 0:
        encoders["pixels_"] = baselines.pixels_encode(run.config.eval.pixel_probe_size)
    probe = LinearProbe(run.config.eval, run.config.data, run.mesh, run.train_info.num_classes)
    results = {}
    for prefix, encode in encoders.items():
        top = probe.run(encode)
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
        started = {}

        def preview_then_train(checkpointer: Checkpointer, writer: metrics.MetricWriter):
            plots.write_augmentation_preview(config, run.workdir, writer)
            started["train"] = time.perf_counter()   # train_seconds leave the preview out
            return train(run, checkpointer, writer)

        state, last = resume.train_with_sinks(run.workdir, config, preview_then_train)
        results = {"stage": "pretrain", "method": config.method, "model": config.model.name,
                   "dataset": config.data.name, "step": int(jax.device_get(state.step)),
                   "total_steps": run.total_steps, "batch_size": config.batch_size,
                   "train_seconds": round(time.perf_counter() - started["train"], 1), **last}
        evaluation = evaluate(run, state)
        results.update(evaluation)
        metrics.write_once(run.workdir, results["step"], evaluation)  # the probe beside the curves (jsonl and TB)
        plots.write_curves(run.workdir)
        path = metrics.write_results(run.workdir, results)
    metrics.log(f"wrote {path}")
    return results
