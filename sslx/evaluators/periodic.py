"""Evaluators the pretraining loop runs every `config.eval.every_steps` (`config.eval.periodic`), by name.

Each is built once from the pretraining run and has `run(state) -> metrics`, logged like the training scalars.
"""
from __future__ import annotations

from typing import Any

import jax

from sslx import data, parallel
from sslx.evaluators.features import extract_features
from sslx.evaluators.knn import knn_classify
from sslx.evaluators.linear import linear_probe


class _FeatureEvaluator:
    """Frozen features of the current encoder on the train split (capped) and the eval split."""

    def __init__(self, run: Any):
        self.pretraining = run
        self.config = run.config
        self.num_classes = run.train_info.num_classes
        if self.num_classes <= 0:
            raise ValueError(f"config.eval.periodic={self.config.eval.periodic!r} needs labels, and "
                             f"{self.config.data.name!r} has none: leave config.eval.periodic empty")

    def features(self, state: Any, split: str, max_examples: int):
        encode = lambda images: self.pretraining.method.encode(state.params, state.batch_stats, images)  # noqa: E731
        local_batch = parallel.round_up(self.config.eval.batch_size, self.pretraining.mesh.size) // jax.process_count()
        batches = data.eval_iterator(self.config.data, split, local_batch=local_batch,
                                     image_size=self.config.data.image_size, max_examples=max_examples,
                                     process_index=jax.process_index(), process_count=jax.process_count())
        return extract_features(encode, batches, self.pretraining.mesh)


class KnnEvaluator(_FeatureEvaluator):
    def run(self, state: Any) -> dict[str, float]:
        eval_cfg = self.config.eval
        train = self.features(state, self.config.data.train_split, eval_cfg.knn_train_examples)
        test = self.features(state, self.config.data.eval_split, -1)
        scores = knn_classify(*train, *test, self.num_classes, self.pretraining.mesh, ks=tuple(eval_cfg.knn_ks),
                              temperature=eval_cfg.knn_temperature)
        return {f"knn_{name}": value for name, value in scores.items()}


class LinearProbeEvaluator(_FeatureEvaluator):
    def run(self, state: Any) -> dict[str, float]:
        eval_cfg = self.config.eval
        train = self.features(state, self.config.data.train_split, eval_cfg.probe_train_examples)
        test = self.features(state, self.config.data.eval_split, -1)
        scores = linear_probe(*train, *test, self.num_classes, l2=eval_cfg.probe_l2, steps=eval_cfg.probe_steps)
        return {f"linear_probe_{name}": value for name, value in scores.items()}


EVALUATORS = {"knn": KnnEvaluator, "linear": LinearProbeEvaluator}


def build(run: Any) -> list:
    """The evaluators named in `config.eval.periodic` (none when config.eval.every_steps <= 0)."""
    eval_cfg = run.config.eval
    names = [name.strip() for name in eval_cfg.periodic.split(",") if name.strip()]
    if eval_cfg.every_steps <= 0:
        return []
    unknown = [name for name in names if name not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.eval.periodic names unknown evaluators {unknown}; known: {sorted(EVALUATORS)}")
    return [EVALUATORS[name](run) for name in names]


def run_all(evaluators: list, state: Any) -> dict[str, float]:
    results: dict[str, float] = {}
    for evaluator in evaluators:
        results.update(evaluator.run(state))
    return results
