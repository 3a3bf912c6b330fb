"""Ready-to-feed numpy iterators per process: multi-view pretraining, padded evaluation, supervised fine-tuning.

Fixed-size data (CIFAR, STL-10, digits, most TFRecords) is batched before decoding so decode and augmentation run
once per batch; variable-size data (ImageNet) is cropped per image first, then augmented as a batch.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from sslx.data import augment, sources

try:  # TF is only the input pipeline: it must never take accelerator memory from JAX.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF was already initialised with its devices: nothing left to hide
    pass

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 10_000
Position = tuple[int, int]  # (epoch, index of the next record in that epoch's shuffled order) of one process
START: Position = (0, 0)
_POSITION_KEYS = ("_epoch", "_index")


def pretrain_iterator(data_cfg, specs: Sequence[augment.AugmentSpec], *, local_batch: int, image_size: int,
                      seed: int, sizes: Sequence[int] = (), process_index: int = 0, process_count: int = 1,
                      on_device: bool = False, host_size: int = 0, start: Position = START,
                      first_batch: int = 0) -> "InputStream":
    """Endless shuffled batches {'views': one float32 [B,S,S,3] in [0, 1] per spec, 'label': int32 [B]}.

    View v has side sizes[v] (default: every view `image_size`), as `augment.view_sizes` lists them for a config's
    crops. The batches are a pure function of (seed, start, first_batch): `start` is an `InputStream.position` saved
    with a checkpoint and `first_batch` the number of batches trained on, which seeds the augmentation of each batch.

    With `on_device` the views are left to sslx.data.device_augment and batches are {'image': uint8, 'label'}:
    fixed-size images as decoded, variable-size ones as a random square of their shorter side resized to
    `host_size` (0: image_size * 8 / 7, 256 for 224). The device's random resized crop then samples within that
    square, so unlike the host path it never spans the long side of a non-square image.
    """
    sizes = tuple(sizes) or (image_size,) * len(specs)
    source = sources.load_split(data_cfg, data_cfg.get("train_split", "train"),
                                process_index=process_index, process_count=process_count)
    seed = _process_seed(seed, process_index)
    locate = _locator(source.records, source.decode, data_cfg, seed)
    if on_device:
        host_size = host_size or default_host_size(image_size)
        return InputStream(_device_inputs(source, data_cfg, local_batch, seed, start, host_size), start, locate)

    def views(batch, batch_seed):
        return {"views": augment.augment_views(batch["image"], specs, batch_seed, sizes), "label": batch["label"],
                **_positions(batch)}

    if _fixed_size(source):
        def sized(example):  # the known size lets augmentation pick its resize method (augment._crop_and_flip)
            return {**example, "image": tf.ensure_shape(example["image"], source.image_shape)}

        batches = _examples(source.records, source.decode, data_cfg, seed, start, then=sized).batch(
            local_batch, drop_remainder=True)
        return InputStream(_with_seeds(batches, seed, first_batch).map(views, num_parallel_calls=AUTOTUNE),
                           start, locate)
    # Variable-size images: each view's crop (and flip) happens per image, decoding only the crops' window; the
    # rest of the augmentation per batch.
    cropped = tuple(augment.after_crop(spec) for spec in specs)

    def crops(example):
        return {**example, "image": augment.random_crops(example["image"], specs, _record_seed(seed, example),
                                                         sizes)}

    def rest(batch, batch_seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(batch_seed, len(specs)))
        return {"views": tuple(augment.augment_batch(crop, spec, view_seed, size) for crop, spec, view_seed, size
                               in zip(batch["image"], cropped, seeds, sizes)),
                "label": batch["label"], **_positions(batch)}

    examples = _examples(source.records, _reader(source, data_cfg), data_cfg, seed, start, then=crops)
    batches = examples.batch(local_batch, drop_remainder=True)
    return InputStream(_with_seeds(batches, seed, first_batch).map(rest, num_parallel_calls=AUTOTUNE),
                       start, locate)


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


def indexed_iterator(data_cfg, split: str, *, local_batch: int, image_size: int, seed: int,
                     process_index: int = 0, process_count: int = 1, start: Position = START) -> "InputStream":
    """Endless shuffled {'image', 'index'} batches: the evaluation's centre crops with random flips, and each
    example's position in the split's read order (the row of a precomputed per-example array, e.g. teacher
    logits); a pure function of (seed, start) as in `pretrain_iterator`."""
    source = sources.load_split(data_cfg, split)
    crop = augment.eval_crop_fraction(source.image_shape)
    seed = _process_seed(seed, process_index)
    records = source.records.enumerate().shard(process_count, process_index)

    def decode(indexed):
        index, record = indexed
        return {"image": source.decode(record)["image"], "index": index}

    def view(example):
        image = augment.eval_preprocess(example["image"], image_size, crop)
        flipped = tf.image.stateless_random_flip_left_right(image, _record_seed(seed, example))
        return {**example, "image": flipped}

    examples = _examples(records, decode, data_cfg, seed, start)
    batches = examples.map(view, num_parallel_calls=AUTOTUNE).batch(local_batch, drop_remainder=True)
    return InputStream(batches, start, _locator(records, decode, data_cfg, seed))


def crop_flip_spec(crop_area_min: float = 0.08) -> augment.AugmentSpec:
    """Random resized crop (area in [crop_area_min, 1], aspect 3/4..4/3) and flip, no colour: the supervised
    augmentation of SimCLR's fine-tuning and linear evaluation."""
    return dataclasses.replace(augment.identity_spec(), crop_area_min=crop_area_min, aspect_min=3 / 4,
                               aspect_max=4 / 3, flip_prob=0.5)


def supervised_iterator(data_cfg, split: str, *, local_batch: int, image_size: int, seed: int,
                        spec: augment.AugmentSpec | None = None, indices: Sequence[int] | None = None,
                        process_index: int = 0, process_count: int = 1, start: Position = START,
                        first_batch: int = 0) -> "InputStream":
    """Endless shuffled {'image', 'label'} batches, augmented by `spec` (default: `crop_flip_spec()`), a pure
    function of (seed, start, first_batch) as in `pretrain_iterator`.

    `indices` restricts training to those examples of the split (e.g. a 1% or 10% label subset); they are
    chosen before the split is divided between processes.
    """
    spec = spec or crop_flip_spec()
    seed = _process_seed(seed, process_index)
    if indices is None:
        source = sources.load_split(data_cfg, split, process_index=process_index, process_count=process_count)
    else:
        source = _subset(sources.load_split(data_cfg, split), indices, process_index, process_count)

    if _fixed_size(source):
        examples, batch_spec = _examples(source.records, source.decode, data_cfg, seed, start), spec
    else:
        def one(example):
            image = augment.random_crops(example["image"], [spec], _record_seed(seed, example), [image_size])[0]
            return {**example, "image": image}
        examples = _examples(source.records, _reader(source, data_cfg), data_cfg, seed, start, then=one)
        batch_spec = augment.after_crop(spec)

    def crop(batch, batch_seed):
        return {"image": augment.augment_batch(batch["image"], batch_spec, batch_seed, image_size),
                "label": batch["label"], **_positions(batch)}

    batches = examples.batch(local_batch, drop_remainder=True)
    return InputStream(_with_seeds(batches, seed, first_batch).map(crop, num_parallel_calls=AUTOTUNE),
                       start, _locator(source.records, source.decode, data_cfg, seed))


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


def _device_inputs(source: sources.Source, data_cfg, local_batch: int, seed: tf.Tensor, start: Position,
                   host_size: int) -> tf.data.Dataset:
    """Batches {'image': uint8 [B,S,S,3], 'label'} to augment on device: decoding is all the host does (and for
    variable-size images a random square of the shorter side, `augment.random_square`)."""
    def square(example):
        return {**example, "image": augment.random_square(example["image"], _record_seed(seed, example), host_size)}

    if _fixed_size(source):
        examples = _examples(source.records, source.decode, data_cfg, seed, start)
    else:
        examples = _examples(source.records, _reader(source, data_cfg), data_cfg, seed, start, then=square)
    return examples.batch(local_batch, drop_remainder=True)


def _fixed_size(source: sources.Source) -> bool:
    return None not in source.image_shape


def _process_seed(seed: int, process_index: int) -> tf.Tensor:
    # Each process shuffles and augments its own shard differently.
    return tf.constant([seed, process_index], tf.int64)


def _epoch_stream(records: tf.data.Dataset, decode_fn, data_cfg, seed: tf.Tensor,
                  start: Position) -> tf.data.Dataset:
    """Endless (position, record) pairs: epoch e is `records` shuffled with a seed drawn from (seed, e).

    Starting at `start` skips that epoch's first records undecoded, so a resumed run reads exactly what the
    uninterrupted one would have read from there on, at the cost of reading at most one epoch's raw records.
    """
    buffer = int(data_cfg.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER))
    first_epoch, first_index = (int(v) for v in start)
    if data_cfg.get("cache", False):  # decode once; later epochs shuffle the decoded uint8 images
        records = records.map(decode_fn, num_parallel_calls=AUTOTUNE).cache()

    def epoch(e):
        epoch_seed = tf.random.experimental.stateless_fold_in(seed, e)
        shuffle_seed = tf.random.stateless_uniform([], epoch_seed, 0, 2**31 - 1, tf.int64)
        skip = tf.where(tf.equal(e, first_epoch), tf.constant(first_index, tf.int64), tf.constant(0, tf.int64))
        shuffled = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.enumerate().skip(skip).map(lambda i, record: ({"_epoch": e, "_index": i}, record))

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)


def _examples(records: tf.data.Dataset, decode_fn, data_cfg, seed: tf.Tensor, start: Position,
              then: Callable[[dict], dict] | None = None) -> tf.data.Dataset:
    """Decoded examples {'image', 'label', '_epoch', '_index'} of the epoch stream from `start`, each passed
    through `then` if given; with data.skip_corrupt (default) a record that does not decode is dropped (InputStream
    counts it from the gap in the positions) instead of stopping the run."""
    stream = _epoch_stream(records, decode_fn, data_cfg, seed, start)
    decode = (lambda record: record) if data_cfg.get("cache", False) else decode_fn  # cached ones are decoded
    then = then or (lambda example: example)
    examples = stream.map(lambda position, record: then({**decode(record), **position}), num_parallel_calls=AUTOTUNE)
    return examples.ignore_errors() if data_cfg.get("skip_corrupt", True) else examples


def _reader(source: sources.Source, data_cfg) -> Callable:
    """What to read records with before `augment.random_crops`: their encoded bytes, so that it decodes only what
    it crops, unless the images are cached decoded (data.cache) or stored as pixels."""
    return source.decode if data_cfg.get("cache", False) or source.encoded is None else source.encoded


def _positions(batch: dict) -> dict:
    return {key: batch[key] for key in _POSITION_KEYS}


def _record_seed(seed: tf.Tensor, example: dict) -> tf.Tensor:
    """A seed of the record's stream position: its per-image randomness does not depend on batching."""
    return tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(seed, example["_epoch"]), example["_index"])


def _with_seeds(batches: tf.data.Dataset, seed: tf.Tensor, first_batch: int) -> tf.data.Dataset:
    """Pairs batch i with the seed fold_in(seed, i), i counted from `first_batch` (the steps already trained), so
    augmentation is fixed by the seed and the step."""
    return batches.enumerate(start=first_batch).map(
        lambda i, batch: (batch, tf.random.experimental.stateless_fold_in(seed, i)))


def _to_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.autotune.enabled = True
    options.threading.private_threadpool_size = 0  # TF's shared pool: all cores
    options.experimental_optimization.map_parallelization = True
    return dataset.prefetch(AUTOTUNE).with_options(options).as_numpy_iterator()


class InputStream:
    """A training iterator that knows where it stands: `position` follows the last batch handed out (saved with
    each checkpoint, so a resumed run continues the same record order) and `skipped` counts the corrupt records
    dropped so far (from gaps in the positions; records dropped at the very end of an epoch go uncounted).

    With data.skip_corrupt off, a record that does not decode ends the run with one line naming it (`locate`)."""

    def __init__(self, dataset: tf.data.Dataset, start: Position, locate: Callable[[Position], str]):
        self._batches = _to_numpy(dataset)
        self.position: Position = (int(start[0]), int(start[1]))
        self.skipped = 0
        self._locate = locate

    def __iter__(self) -> "InputStream":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._batches)
        except tf.errors.OpError as error:
            reason = re.sub(r"^\{\{[^}]*\}\}\s*", "", str(error.message).splitlines()[0])  # TF's op prefix
            raise ValueError(f"{self._locate(self.position)} does not decode ({reason}): repair or remove it, or "
                             f"set config.data.skip_corrupt=True to skip and count such records") from None
        epochs, indices = batch.pop("_epoch"), batch.pop("_index")
        self.skipped += _gaps(self.position, epochs, indices)
        self.position = (int(epochs[-1]), int(indices[-1]) + 1)
        return batch


# Records decoded one by one to find the bad one (past what prefetching can have read ahead of a failed batch).
_LOCATE_LIMIT = 100_000


def _locator(records: tf.data.Dataset, decode_fn, data_cfg, seed: tf.Tensor) -> Callable[[Position], str]:
    """`locate(position)`: names the first record from `position` on that does not decode: its `id` feature (a
    TFRecord's source file name) where it has one, else its place in the shuffled order."""
    where = f"{data_cfg.name} {data_cfg.get('path') or ''}".strip()

    def locate(position: Position) -> str:
        stream = _epoch_stream(records, decode_fn, {**data_cfg, "cache": False}, seed, position)
        for place, record in stream.take(_LOCATE_LIMIT):
            try:
                decode_fn(record)
            except tf.errors.OpError:
                name = sources.record_id(record)
                return (f"the record {name + ' ' if name else ''}(epoch {int(place['_epoch'])}, record "
                        f"{int(place['_index'])} of the shuffled order) of {where}")
        return f"a record of {where} after epoch {position[0]} record {position[1]} of the shuffled order"

    return locate


def _gaps(position: Position, epochs: np.ndarray, indices: np.ndarray) -> int:
    """Records skipped between `position` and the batch's positions (a new epoch counts from its index 0)."""
    expected_epoch = np.concatenate([[position[0]], epochs[:-1]])
    expected_index = np.concatenate([[position[1]], indices[:-1] + 1])
    return int(np.where(epochs == expected_epoch, indices - expected_index, indices).sum())
