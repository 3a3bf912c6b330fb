"""Ready-to-feed numpy iterators per process: two-view pretraining, padded evaluation, supervised fine-tuning.

Fixed-size data (CIFAR, STL-10, digits, most TFRecords) is batched before decoding so decode and augmentation run
once per batch; variable-size data (ImageNet) is cropped per image first, then augmented as a batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from sslx.data import augment, sources

try:  # TF is only the input pipeline: it must never take accelerator memory from JAX.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF was already initialised with its devices: nothing left to hide
    pass

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 10_000


def pretrain_iterator(data_cfg, specs: tuple[augment.AugmentSpec, augment.AugmentSpec], *, local_batch: int,
                      image_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                      on_device: bool = False, host_size: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches {'view1', 'view2': float32 [B,S,S,3] in [0, 1], 'label': int32 [B]}.

    With `on_device` the views are left to sslx.data.device_augment and batches are {'image': uint8, 'label'}:
    fixed-size images as decoded, variable-size ones as a random square of their shorter side resized to
    `host_size` (0: image_size * 8 / 7, 256 for 224). The device's random resized crop then samples within that
    square, so unlike the host path it never spans the long side of a non-square image.
    """
    source = sources.load_split(data_cfg, data_cfg.get("train_split", "train"),
                                process_index=process_index, process_count=process_count)
    seed = _process_seed(seed, process_index)
    if on_device:
        host_size = host_size or default_host_size(image_size)
        return _to_numpy(_device_inputs(source, data_cfg, local_batch, seed, host_size))

    def views(batch, batch_seed):
        view1, view2 = augment.two_views(batch["image"], specs, batch_seed, image_size)
        return {"view1": view1, "view2": view2, "label": batch["label"]}

    if _fixed_size(source):
        batches = _decoded_batches(source, data_cfg, local_batch, seed)
        return _to_numpy(_with_seeds(batches, seed).map(views, num_parallel_calls=AUTOTUNE))
    # Variable-size images: each view's crop happens per image, the rest of the augmentation per batch.
    uncropped = tuple(augment.without_crop(spec) for spec in specs)

    def crops(index, example):
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, index), 2)
        return {"image": tf.stack([augment.random_crop(example["image"], spec, s, image_size)
                                   for spec, s in zip(specs, tf.unstack(seeds))]), "label": example["label"]}

    def rest(batch, batch_seed):
        seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
        return {"view1": augment.augment_batch(batch["image"][:, 0], uncropped[0], seed1, image_size),
                "view2": augment.augment_batch(batch["image"][:, 1], uncropped[1], seed2, image_size),
                "label": batch["label"]}

    examples = _shuffled(source.records, data_cfg, seed).map(source.decode, num_parallel_calls=AUTOTUNE)
    examples = examples.enumerate().map(crops, num_parallel_calls=AUTOTUNE)
    batches = examples.batch(local_batch, drop_remainder=True)
    return _to_numpy(_with_seeds(batches, seed).map(rest, num_parallel_calls=AUTOTUNE))


def eval_iterator(data_cfg, split: str, *, local_batch: int, image_size: int, max_examples: int = -1,
                  crop_fraction: float | None = None, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` (its first `max_examples` when > 0) in order: {'image', 'label', 'mask'}.

    Every batch has `local_batch` rows (padding rows have mask 0) and every process yields the same number of
    batches, so a jitted step sees one shape and all hosts step together. `crop_fraction` defaults to 1.0 for
    images of at most 64 px (SimCLR keeps CIFAR whole) and 0.875 otherwise.
    """
    source = sources.load_split(data_cfg, split, process_index=process_index, process_count=process_count,
                                max_examples=max_examples, even_shards=True)
    if crop_fraction is None:
        crop_fraction = augment.eval_crop_fraction(source.image_shape)
    steps = math.ceil(math.ceil(source.num_examples / process_count) / local_batch)

    def preprocess(example):
        return {"image": augment.eval_preprocess(example["image"], image_size, crop_fraction),
                "label": example["label"], "mask": tf.constant(1.0)}

    examples = source.dataset.map(preprocess, num_parallel_calls=AUTOTUNE)
    blank = {"image": tf.zeros([image_size, image_size, 3]), "label": tf.constant(-1), "mask": tf.constant(0.0)}
    padded = examples.concatenate(tf.data.Dataset.from_tensors(blank).repeat())
    return _to_numpy(padded.batch(local_batch).take(steps))


def crop_flip_spec(crop_area_min: float = 0.08) -> augment.AugmentSpec:
    """Random resized crop (area in [crop_area_min, 1], aspect 3/4..4/3) and flip, no colour: the supervised
    augmentation of SimCLR's fine-tuning and linear evaluation."""
    return dataclasses.replace(augment.identity_spec(), crop_area_min=crop_area_min, aspect_min=3 / 4,
                               aspect_max=4 / 3, flip_prob=0.5)


def supervised_iterator(data_cfg, split: str, *, local_batch: int, image_size: int, seed: int,
                        spec: augment.AugmentSpec | None = None, indices: Sequence[int] | None = None,
                        process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled {'image', 'label'} batches, augmented by `spec` (default: `crop_flip_spec()`).

    `indices` restricts training to those examples of the split (e.g. a 1% or 10% label subset); they are
    chosen before the split is divided between processes.
    """
    spec = spec or crop_flip_spec()
    seed = _process_seed(seed, process_index)
    if indices is None:
        source = sources.load_split(data_cfg, split, process_index=process_index, process_count=process_count)
    else:
        source = _subset(sources.load_split(data_cfg, split), indices, process_index, process_count)

    def crop(batch, batch_seed):
        return {"image": augment.augment_batch(batch["image"], spec, batch_seed, image_size),
                "label": batch["label"]}

    if _fixed_size(source):
        batches = _decoded_batches(source, data_cfg, local_batch, seed)
    else:
        def one(index, example):
            image = augment.random_crop(example["image"], spec, tf.random.experimental.stateless_fold_in(
                seed, index), image_size)
            return {"image": image, "label": example["label"]}
        spec = augment.without_crop(spec)
        examples = _shuffled(source.records, data_cfg, seed).map(source.decode, num_parallel_calls=AUTOTUNE)
        batches = examples.enumerate().map(one, num_parallel_calls=AUTOTUNE).batch(local_batch, drop_remainder=True)
    return _to_numpy(_with_seeds(batches, seed).map(crop, num_parallel_calls=AUTOTUNE))


def _subset(source: sources.Source, indices: Sequence[int], process_index: int,
            process_count: int) -> sources.Source:
    keep = np.zeros(source.num_examples, bool)
    keep[np.asarray(indices, np.int64)] = True
    keep = tf.constant(keep)
    # Cached so that each epoch does not rescan the whole split for a few examples; big subsets such as
    # ImageNet's 1% and 10% are better read from their own TFDS builds (imagenet2012_subset).
    records = source.records.enumerate().filter(lambda i, _: keep[i]).map(lambda _, record: record).cache()
    info = dataclasses.replace(source.info, num_examples=int(keep.numpy().sum()))
    return dataclasses.replace(source, records=records.shard(process_count, process_index), info=info)


def default_host_size(image_size: int) -> int:
    """The on_device host square for variable-size images: Inception's resize-to-256-for-224 ratio."""
    return round(image_size * 8 / 7)


def _device_inputs(source: sources.Source, data_cfg, local_batch: int, seed: tf.Tensor,
                   host_size: int) -> tf.data.Dataset:
    """Batches {'image': uint8 [B,S,S,3], 'label'} to augment on device: decoding is all the host does."""
    if _fixed_size(source):
        return _decoded_batches(source, data_cfg, local_batch, seed)

    def square(index, example):
        image = example["image"]
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        spare = tf.cast(shape[:2] - side, tf.float32)
        offset = tf.cast(tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(seed, index))
                         * (spare + 1.0), tf.int32)
        crop = image[offset[0]:offset[0] + side, offset[1]:offset[1] + side]
        resized = tf.image.resize(crop, [host_size, host_size], antialias=True)  # antialias: mostly shrinking
        return {"image": tf.saturate_cast(tf.round(resized), tf.uint8), "label": example["label"]}

    examples = _shuffled(source.records, data_cfg, seed).map(source.decode, num_parallel_calls=AUTOTUNE)
    return examples.enumerate().map(square, num_parallel_calls=AUTOTUNE).batch(local_batch, drop_remainder=True)


def _fixed_size(source: sources.Source) -> bool:
    return None not in source.image_shape


def _process_seed(seed: int, process_index: int) -> tf.Tensor:
    # Each process shuffles and augments its own shard differently.
    return tf.constant([seed, process_index], tf.int64)


def _shuffled(records: tf.data.Dataset, data_cfg, seed: tf.Tensor) -> tf.data.Dataset:
    buffer = int(data_cfg.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER))
    shuffle_seed = int(tf.random.stateless_uniform([], seed, 0, 2**31 - 1, tf.int64))
    return records.repeat().shuffle(buffer, seed=shuffle_seed)


def _decoded_batches(source: sources.Source, data_cfg, local_batch: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Endless shuffled batches {'image': uint8 [B,H,W,3], 'label'} of a fixed-size source."""
    shape = source.image_shape
    if data_cfg.get("cache", False):
        # Decode once; later epochs shuffle the decoded uint8 images (CIFAR-10 train is 150 MB).
        examples = source.dataset.cache()
        return _shuffled(examples, data_cfg, seed).batch(local_batch, drop_remainder=True)

    def decode(records):
        return tf.map_fn(source.decode, records, fn_output_signature={
            "image": tf.TensorSpec(shape, tf.uint8), "label": tf.TensorSpec([], tf.int32)})

    records = _shuffled(source.records, data_cfg, seed).batch(local_batch, drop_remainder=True)
    return records.map(decode, num_parallel_calls=AUTOTUNE)


def _with_seeds(batches: tf.data.Dataset, seed: tf.Tensor) -> tf.data.Dataset:
    """Pairs batch i with the seed fold_in(seed, i), so augmentation is fixed by the seed and the data order."""
    return batches.enumerate().map(
        lambda i, batch: (batch, tf.random.experimental.stateless_fold_in(seed, i)))


def _to_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.autotune.enabled = True
    options.threading.private_threadpool_size = 0  # TF's shared pool: all cores
    options.experimental_optimization.map_parallelization = True
    return dataset.prefetch(AUTOTUNE).with_options(options).as_numpy_iterator()
