"""Evaluators the pretraining loop runs every `config.eval.every_steps` (`config.eval.periodic`), by name.

Each is built once from its config section, the data section and the mesh, and has `run(encode) -> metrics` for an
encode function of the current state; the metrics are logged like the training scalars, prefixed with the name.
"""
from __future__ import annotations

from typing import Callable

import ml_collections
from jax.sharding import Mesh

from sslx.evaluators.features import Encode
from sslx.evaluators.knn import KnnEvaluator
from sslx.evaluators.linear import LinearProbe


def _knn(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int) -> KnnEvaluator:
    return KnnEvaluator(config.knn, config.data, mesh, config.eval.batch_size, num_classes)


def _linear_probe(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int) -> LinearProbe:
    return LinearProbe(config.eval, config.data, mesh, num_classes)


# A name in config.eval.periodic -> (the prefix of its metrics, its builder from the pretraining config).
EVALUATORS: dict[str, tuple[str, Callable]] = {"knn": ("knn", _knn), "linear": ("linear_probe", _linear_probe)}


def build(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int) -> dict:
    """{metric prefix: evaluator} for the names in `config.eval.periodic` (none when config.eval.every_steps <= 0)."""
    names = [name.strip() for name in config.eval.periodic.split(",") if name.strip()]
    if config.eval.every_steps <= 0 or not names:
        return {}
    unknown = [name for name in names if name not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.eval.periodic names unknown evaluators {unknown}; known: {sorted(EVALUATORS)}")
    if num_classes <= 0:
        raise ValueError(f"config.eval.periodic={config.eval.periodic!r} needs labels, and {config.data.name!r} has "
                         f"none: leave config.eval.periodic empty")
    return {EVALUATORS[name][0]: EVALUATORS[name][1](config, mesh, num_classes) for name in names}


def run_all(evaluators: dict, encode: Encode) -> dict[str, float]:
    return {f"{prefix}_{key}": value for prefix, evaluator in evaluators.items()
            for key, value in evaluator.run(encode).items()}
