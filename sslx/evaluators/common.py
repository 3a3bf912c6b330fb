"""What the evaluation stages share: the data section, labelled subsets and batches, classifier accuracy, results."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sslx import data, metrics, paths
from sslx.evaluators import subsets
from sslx.evaluators.encoders import Trained, build_classifier
from sslx.evaluators.features import split_features
from sslx.evaluators.linear import topk_accuracy
from sslx.models import network_variables


def data_config(config: ml_collections.ConfigDict, pretrain_config: ml_collections.ConfigDict):
    """The eval config's data section when it names a data set, else the one the pretraining used."""
    return config.data if config.data.name else pretrain_config.data


def check_labelled(data_cfg, split: str) -> data.SplitInfo:
    info = data.describe(data_cfg, split)
    if info.num_classes <= 0:
        raise ValueError(f"data set {data_cfg.name!r} split {split!r} has no labels (num_classes unknown): set "
                         f"config.data to a labelled data set (for tfrecord: labels.txt or config.data.num_classes)")
    return info


def stage_features(fn: Callable[[jax.Array], jax.Array], digest: str, config: ml_collections.ConfigDict,
                   pretrained: Trained, data_cfg, split: str, mesh: Mesh,
                   max_examples: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """`split_features` of an evaluation stage, saved to and read back from `config.features_dir` when it is set.

    The file is named by everything the features depend on: the network's variables (`digest`, their
    `variables_digest`, hashed once per stage: a retrained workdir never reads stale features), the baseline and
    head layer, the data section and the split. The kNN and fast linear-eval stages of one encoder then decode and
    encode each split once.
    """
    if not config.features_dir:
        return split_features(fn, data_cfg, split, mesh, config.eval_batch_size, max_examples)
    key = {"max_examples": max_examples, "variables": digest, "baseline": config.baseline,
           "head_layer": config.head_layer, "pixel_size": config.pixel_size if config.baseline == "pixels" else None,
           "data": data_cfg.to_dict(), "split": split, "pretrained_model": pretrained.config.model.to_dict()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = paths.as_path(config.features_dir) / f"{split.replace('/', '_')}-{digest}.npz"
    # Every process must take the same branch: extraction is collective. The chief's view decides.
    if bool(multihost_utils.broadcast_one_to_all(np.asarray(path.exists()))):
        with path.open("rb") as f:
            stored = np.load(f)
            metrics.log(f"features of {split}: read {path}")
            return stored["features"], stored["labels"]
    features, labels = split_features(fn, data_cfg, split, mesh, config.eval_batch_size, max_examples)
    if metrics.is_chief():
        write_features(path, features, labels)
    return features, labels


def variables_digest(variables: Any) -> str:
    """A hash of a (replicated) variable tree's values; '' for a network without variables (raw pixels)."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(variables):
        digest.update(np.ascontiguousarray(leaf.addressable_data(0)).tobytes())
    return digest.hexdigest()


def write_features(path, features: np.ndarray, labels: np.ndarray) -> None:
    """Writes through a temporary name, so an interrupted write never leaves a truncated file to be read."""
    buffer = io.BytesIO()
    np.savez(buffer, features=features, labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f"{path.name}.partial"
    partial.write_bytes(buffer.getvalue())
    partial.rename(path)


# SimCLR's canonical ImageNet label lists, shipped by TFDS as splits of their own.
IMAGENET_SUBSETS = {0.01: "imagenet2012_subset/1pct", 0.1: "imagenet2012_subset/10pct"}


class LabelledSubset(NamedTuple):
    data: Any                      # the data section to train on
    indices: np.ndarray | None     # into its train split, or None for all of it
    count: int                     # number of labelled examples
    write: Callable[[Any], Any]    # write(workdir): lists the examples' ids in <workdir>/label_subset.json


def labelled_subset(data_cfg, fraction: float, seed: int) -> LabelledSubset:
    """The labelled examples a stage trains on; written to the workdir by `write` once its checks passed.

    imagenet2012 at 1% / 10% uses TFDS imagenet2012_subset; any other fraction below 1 a seeded class-balanced
    subset; 1.0 the whole split (nothing to list).
    """
    split = data_cfg.train_split
    if data_cfg.name == "imagenet2012" and fraction in IMAGENET_SUBSETS:
        subset_data = ml_collections.ConfigDict(data_cfg.to_dict())
        subset_data.name, subset_data.train_split = IMAGENET_SUBSETS[fraction], "train"
        count = check_labelled(subset_data, "train").num_examples
        ids = data.labels_and_ids(subset_data, "train")[1]
        return LabelledSubset(subset_data, None, count, functools.partial(
            subsets.write_subset, indices=np.arange(count), ids=ids, dataset=subset_data.name, split="train",
            fraction=fraction))
    if fraction == 1.0:
        return LabelledSubset(data_cfg, None, check_labelled(data_cfg, split).num_examples, lambda workdir: None)
    labels, ids = data.labels_and_ids(data_cfg, split)
    indices = subsets.balanced_subset(labels, fraction, seed)
    return LabelledSubset(data_cfg, indices, len(indices), functools.partial(
        subsets.write_subset, indices=indices, ids=ids[indices], dataset=data_cfg.name, split=split,
        fraction=fraction, seed=seed))


def labelled_batches(data_cfg, split: str, indices: np.ndarray | None, global_batch: int, seed: int,
                     spec: data.AugmentSpec | None = None, start: data.Position = data.START,
                     first_batch: int = 0) -> data.InputStream:
    """Random crop + flip batches of `split` (only `indices` if given), endless, for this process, from the
    stream position `start`; `spec` defaults to `data.crop_flip_spec()`."""
    return data.supervised_iterator(data_cfg, split, local_batch=global_batch // jax.process_count(),
                                    image_size=data_cfg.image_size, seed=seed, indices=indices, spec=spec,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    start=start, first_batch=first_batch)


def base_results(stage: str, pretrained: Trained, split: str, num_labelled: int,
                 baseline: str = "") -> dict[str, Any]:
    """The fields every evaluation's results.json starts with; `baseline` names baseline features, if any."""
    results = {"stage": stage, "pretrained": str(pretrained.workdir), "step": pretrained.step, "split": split,
               "num_labelled": int(num_labelled), "model": pretrained.config.model.name,
               "method": pretrained.config.get("method", "")}
    if baseline:
        results["baseline"] = baseline
    return results


def features_title(config: ml_collections.ConfigDict, pretrained: Trained) -> str:
    """What an evaluation reads its features from, for logs and plot titles."""
    if config.get("baseline") == "pixels":
        return f"raw pixels (at most {config.pixel_size} px a side)"
    if config.get("baseline") == "random_init":
        return f"{pretrained.config.model.name} at a random initialisation"
    return f"{pretrained.config.get('method', '')} step {pretrained.step}"


def finish(workdir: paths.PathLike, results: dict[str, Any], started: float) -> dict[str, Any]:
    """Writes results.json and the scalars to TensorBoard / metrics.jsonl; logs one summary line."""
    results["seconds"] = round(time.perf_counter() - started, 1)
    writer = metrics.MetricWriter(workdir)
    writer.write(results["step"], {k: v for k, v in results.items()
                                   if isinstance(v, float) and k not in ("seconds",)})
    writer.close()
    path = metrics.write_results(workdir, results)
    metrics.log(f"{results['stage']}: top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f} on "
                f"{results['split']} ({results['seconds']:.0f} s); wrote {path}")
    return results


def classifier_variables(recorded: ml_collections.ConfigDict, seed: int,
                         pretrained: Trained | None) -> tuple[Any, Any]:
    """(params, batch_stats) of a fresh classifier built from its workdir config `recorded`; its encoder and the
    projection-head layers it keeps come from `pretrained` where given (batch_stats only where there is BatchNorm:
    a ViT encoder has none)."""
    size = recorded.data.image_size
    variables = jax.jit(build_classifier(recorded, None).init, static_argnames="train")(
        jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
    params, batch_stats = dict(variables["params"]), dict(variables.get("batch_stats", {}))
    if pretrained is not None:
        for fresh, trained in ((params, pretrained.params), (batch_stats, pretrained.batch_stats)):
            for part in ("encoder", "head"):
                if part in fresh:
                    fresh[part] = {name: trained[part][name] for name in fresh[part]}
    return params, batch_stats


def classifier_accuracy(recorded: ml_collections.ConfigDict, params: Any, batch_stats: Any, data_cfg, mesh: Mesh,
                        batch_size: int) -> dict[str, float]:
    """Top-1/top-5 on `data_cfg.eval_split` of the classifier of workdir config `recorded` (eval mode),
    data-parallel."""
    variables = network_variables(params, batch_stats)
    network = build_classifier(recorded, None)
    logits, labels = split_features(lambda images: network.apply(variables, images, train=False), data_cfg,
                                    data_cfg.eval_split, mesh, batch_size)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def check_loop_keys(cfg: ml_collections.ConfigDict, section: str) -> None:
    """One-line errors for a classifier stage's loop settings (config.<section>)."""
    for key in ("batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ValueError(f"config.{section}.{key}={cfg[key]!r} must be a positive integer")
