"""Data sets by name (`config.data.name`): each process gets its own shard of undecoded records.

A `Source` keeps records undecoded and hands out a per-example decoder, so the pipeline can batch records first
and decode a whole batch in one tf.data call (per-element tf.data overhead is a large share of a 32 px example).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from sslx import paths
from sslx.data import folder

DIGITS_TRAIN_EXAMPLES = 1500  # sklearn's 1797 digits: the first 1500 train, the remaining 297 test
_SHAPE_PROBE = 64
NAMES = ("digits", "tfrecord", "folder", "<any TFDS name, e.g. cifar10, cifar100, stl10, imagenet2012>")


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    num_examples: int  # of the whole split (all processes), after any max_examples cap
    num_classes: int
    image_shape: tuple[int | None, int | None, int]  # None where image sizes vary (ImageNet)


@dataclasses.dataclass(frozen=True)
class Source:
    """One process's shard of a split: undecoded `records`, `decode` (record -> {'image','label'}) and, where
    records hold encoded images, `encoded` (record -> {'image': the file's bytes, 'label'}), so that a pipeline
    can decode only the part of the image it uses (augment.random_crops)."""
    records: tf.data.Dataset
    decode: Callable[[Any], dict[str, tf.Tensor]]
    info: SplitInfo
    encoded: Callable[[Any], dict[str, tf.Tensor]] | None = None

    @property
    def dataset(self) -> tf.data.Dataset:
        """Decoded examples {'image': uint8 [H,W,3], 'label': int32 (-1 if unlabelled)}."""
        return self.records.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)

    @property
    def num_examples(self) -> int:
        return self.info.num_examples

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int | None, int | None, int]:
        return self.info.image_shape


def describe(data_cfg, split: str, max_examples: int = -1) -> SplitInfo:
    """Sizes of a split without building a pipeline (for config validation before compiling)."""
    name = data_cfg.name
    if name == "digits":
        info = SplitInfo(len(_digits(split)[1]), 10, (8, 8, 3))
    elif name == "tfrecord":
        info = _tfrecord_info(str(data_cfg.path), split, int(data_cfg.get("num_classes", -1)))
    elif name == "folder":
        files = folder.split_files(data_cfg, split)
        info = SplitInfo(len(files.paths), len(files.class_names) or -1, folder.image_shape(files))
    else:
        info = _tfds_info(_tfds_builder(name, data_cfg.get("data_dir")), split)
    return _capped(info, max_examples)


def load_split(data_cfg, split: str, *, process_index: int = 0, process_count: int = 1,
               max_examples: int = -1, even_shards: bool = False) -> Source:
    """This process's share of `split` (the first `max_examples` of it when > 0).

    Training can shard whole files (each process reads only its files); `even_shards=True` shards records instead,
    so shard sizes differ by at most one, which evaluation needs to give every process the same number of batches.
    """
    info = describe(data_cfg, split, max_examples)
    name = data_cfg.name
    if name == "digits":
        images, labels = _digits(split)
        records = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        records = _take(records, max_examples).shard(process_count, process_index)
        return Source(records, lambda r: r, info)
    if name == "tfrecord":
        files = _tfrecord_files(str(data_cfg.path), split)
        if even_shards or max_examples > 0 or len(files) < process_count:
            records = _take(tf.data.TFRecordDataset(files), max_examples).shard(process_count, process_index)
        else:
            records = tf.data.TFRecordDataset(files[process_index::process_count])
        return Source(records, _decode_example, info, _parse_example)
    if name == "folder":
        files = folder.split_files(data_cfg, split)
        records = tf.data.Dataset.from_tensor_slices({"path": list(files.paths), "label": files.labels})
        return Source(_take(records, max_examples).shard(process_count, process_index), folder.decode_file, info,
                      folder.read_file)
    builder = _tfds_builder(name, data_cfg.get("data_dir"))
    return Source(_tfds_records(builder, split, process_index, process_count, max_examples),
                  _decode_tfds, info, _tfds_encoded)


def labels_and_ids(data_cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and stable keys of `split`'s examples in its unsharded read order (what subset indices refer to),
    read without decoding a single image.

    Keys: a TFRecord's `id` bytes feature (`<split>/<position>` where records have none); the `tfds_id` TFDS
    attaches to every example; `digits/<split>/<position>` for digits; a folder's image paths relative to
    config.data.path.
    """
    name = data_cfg.name
    if name == "digits":
        labels = _digits(split)[1]
        return labels, np.array([f"digits/{split}/{i}" for i in range(len(labels))])
    if name == "folder":
        files = folder.split_files(data_cfg, split)
        return files.labels.copy(), np.array(files.ids)
    if name == "tfrecord":
        parse = lambda r: tf.io.parse_single_example(r, _KEY_FEATURES)  # noqa: E731
        keys = tf.data.TFRecordDataset(_tfrecord_files(str(data_cfg.path), split)).map(parse)
    else:
        import tensorflow_datasets as tfds
        builder = _tfds_builder(name, data_cfg.get("data_dir"))
        keys = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=True),
                                  decoders={"image": tfds.decode.SkipDecoding()})
        keys = keys.map(lambda r: {"label": r.get("label", tf.constant(-1, tf.int64)), "id": r["tfds_id"]})
    pairs = list(keys.batch(4096).as_numpy_iterator())
    labels = np.concatenate([p["label"] for p in pairs]).astype(np.int32)
    ids = np.array([key.decode() for p in pairs for key in p["id"]])
    missing = ids == ""
    ids[missing] = [f"{split}/{i}" for i in np.flatnonzero(missing)]
    return labels, ids


def _capped(info: SplitInfo, max_examples: int) -> SplitInfo:
    if 0 < max_examples < info.num_examples:
        return dataclasses.replace(info, num_examples=max_examples)
    return info


def _take(records: tf.data.Dataset, max_examples: int) -> tf.data.Dataset:
    return records.take(max_examples) if max_examples > 0 else records


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255
    return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int32)


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_arrays()
    if split == "train":
        return images[:DIGITS_TRAIN_EXAMPLES], labels[:DIGITS_TRAIN_EXAMPLES]
    if split == "test":
        return images[DIGITS_TRAIN_EXAMPLES:], labels[DIGITS_TRAIN_EXAMPLES:]
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r} (config.data.train_split/eval_split).")


_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64, -1)}
_KEY_FEATURES = {"label": _FEATURES["label"], "id": tf.io.FixedLenFeature([], tf.string, "")}


def _parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    example = tf.io.parse_single_example(serialized, _FEATURES)
    return {"image": example["image"], "label": tf.cast(example["label"], tf.int32)}


def _decode_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    example = _parse_example(serialized)
    return {**example, "image": tf.io.decode_jpeg(example["image"], channels=3)}


def _count_records(file: str, path: str) -> int:
    """Records in one TFRecord file (read, not decoded); a damaged file is a one-line error naming it."""
    try:
        return int(tf.data.TFRecordDataset(file).batch(4096).reduce(np.int64(0),
                                                                   lambda n, b: n + tf.size(b, tf.int64)))
    except tf.errors.DataLossError as error:
        raise ValueError(f"{file} is not a readable TFRecord file ({error.message.splitlines()[0]}): remove it "
                         f"from config.data.path={path} or rewrite it") from None


def record_id(record) -> str | None:
    """The `id` feature of an undecoded TFRecord example (e.g. the JPEG's source path), if it has one."""
    if not (isinstance(record, tf.Tensor) and record.dtype == tf.string and record.shape.rank == 0):
        return None
    key = tf.io.parse_single_example(record, _KEY_FEATURES)["id"].numpy().decode()
    return key or None


def _tfrecord_files(path: str, split: str) -> list[str]:
    files = sorted(str(p) for p in paths.as_path(path).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.tfrecord files in {path!r}: set config.data.path to a directory "
                                f"holding them (`sslx-make-tfrecords IMAGE_DIR OUT_DIR` converts a folder of "
                                f"JPEG/PNG images; config.data.name='folder' reads such a folder directly).")
    return files


@functools.cache
def _tfrecord_info(path: str, split: str, num_classes: int) -> SplitInfo:
    files = _tfrecord_files(path, split)
    labels_txt = paths.as_path(path) / "labels.txt"
    if labels_txt.exists():
        num_classes = sum(1 for line in labels_txt.read_text().splitlines() if line.strip())
    count = sum(_count_records(f, path) for f in files)
    # Image sizes from the first records' JPEG headers (no decoding); mixed sizes there mean variable-size data.
    shapes = tf.data.TFRecordDataset(files[:1]).take(_SHAPE_PROBE).map(
        lambda r: tf.io.extract_jpeg_shape(tf.io.parse_single_example(r, _FEATURES)["image"])).ignore_errors()
    shapes = np.stack(list(shapes.as_numpy_iterator()))
    height, width = (int(shapes[0, i]) if (shapes[:, i] == shapes[0, i]).all() else None for i in range(2))
    return SplitInfo(int(count), num_classes, (height, width, 3))


def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"config.data.name={name!r} is not a known data set; use one of {', '.join(NAMES)}."
                         ) from None
    if not builder.is_prepared():
        manual = " (ImageNet needs its archives downloaded by hand into DIR/downloads/manual first)" \
            if name.startswith("imagenet") else ""
        raise FileNotFoundError(
            f"TFDS data set {name!r} is not prepared in data_dir={data_dir!r} and sslx never downloads: run "
            f"`tfds build {name} --data_dir DIR` on a machine with internet{manual}, then set "
            f"config.data.data_dir=DIR.")
    return builder


def _tfds_info(builder, split: str) -> SplitInfo:
    if split not in builder.info.splits:
        raise ValueError(f"{builder.name} has splits {sorted(builder.info.splits)}, not {split!r} "
                         f"(config.data.train_split/eval_split).")
    label = builder.info.features["label"] if "label" in builder.info.features else None
    return SplitInfo(builder.info.splits[split].num_examples, label.num_classes if label else -1,
                     tuple(builder.info.features["image"].shape))


def _tfds_records(builder, split: str, process_index: int, process_count: int, max_examples: int):
    import tensorflow_datasets as tfds
    if max_examples > 0:
        split = f"{split}[:{max_examples}]"
    if process_count > 1:
        split = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    # Decoding waits for the pipeline, which decodes after batching raw records.
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()})


def _tfds_encoded(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    label = record["label"] if "label" in record else tf.constant(-1, tf.int64)
    return {"image": record["image"], "label": tf.cast(label, tf.int32)}


def _decode_tfds(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    example = _tfds_encoded(record)
    return {**example, "image": tf.io.decode_image(example["image"], channels=3, expand_animations=False)}


def class_names(data_cfg, split: str) -> tuple[str, ...]:
    """Names of the label ids of `split` (for pictures); () where the data set has none."""
    name = data_cfg.name
    if name == "digits":
        return tuple(str(d) for d in range(10))
    if name == "folder":
        return folder.split_files(data_cfg, split).class_names
    if name == "tfrecord":
        labels_txt = paths.as_path(str(data_cfg.path)) / "labels.txt"
        return tuple(line.strip() for line in labels_txt.read_text().splitlines() if line.strip()) \
            if labels_txt.exists() else ()
    features = _tfds_builder(name, data_cfg.get("data_dir")).info.features
    return tuple(features["label"].names) if "label" in features else ()
