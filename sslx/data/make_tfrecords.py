"""`sslx-make-tfrecords DIR OUT`: a folder of JPEG/PNG images (sslx.data.folder's layouts) as the `tfrecord` data set.

Writes OUT/{split}-NNNNN-of-MMMMM.tfrecord for every split of DIR, each record a tf.train.Example with `image`
(JPEG bytes: JPEG files copied unchanged, anything else re-encoded as JPEG), int64 `label` (-1: unlabelled) and
`id` (the image's path relative to DIR), in the folder source's shuffled read order, and OUT/labels.txt with the
class names in label order. Reading these is faster than the folder (one sequential read per shard).
"""
from __future__ import annotations

import argparse
import math
import posixpath

import ml_collections
import numpy as np
import tensorflow as tf

from sslx.data import folder


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sslx-make-tfrecords", description=__doc__.split("\n")[0])
    parser.add_argument("source", metavar="DIR", help="folder of JPEG/PNG images (class subfolders give labels)")
    parser.add_argument("out", metavar="OUT", help="directory for the .tfrecord shards and labels.txt")
    parser.add_argument("--train-split", default="train", help="the train subfolder (or name of the train part)")
    parser.add_argument("--eval-split", default="test",
                        help="name of the held-out part of a folder without split subfolders")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="without split subfolders: share of each class held out as --eval-split")
    parser.add_argument("--split-seed", type=int, default=0, help="seeds the hold-out and the record order")
    parser.add_argument("--examples-per-shard", type=int, default=1024)
    parser.add_argument("--jpeg-quality", type=int, default=95, help="for images that are not JPEG already")
    return parser.parse_args(argv)


def folder_config(source: str, train_split: str = "train", eval_split: str = "test", eval_fraction: float = 0.1,
                  split_seed: int = 0) -> ml_collections.ConfigDict:
    """The `folder` data section for DIR, as config.data would hold it."""
    return ml_collections.ConfigDict({"name": "folder", "path": source, "train_split": train_split,
                                      "eval_split": eval_split, "eval_fraction": eval_fraction,
                                      "split_seed": split_seed})


def write_tfrecords(data_cfg, out: str, *, examples_per_shard: int = 1024,
                    jpeg_quality: int = 95) -> dict[str, int]:
    """Converts every split of the folder data_cfg describes; returns {split: number of examples}."""
    if examples_per_shard <= 0:
        raise ValueError(f"--examples-per-shard={examples_per_shard} must be positive")
    splits = {name: folder.split_files(data_cfg, name) for name in folder.split_names(data_cfg)}
    tf.io.gfile.makedirs(out)
    for name in splits:
        if tf.io.gfile.glob(posixpath.join(out, f"{name}-*.tfrecord")):
            raise FileExistsError(f"{out} already holds {name}-*.tfrecord files: write to an empty directory")
    class_names = next(iter(splits.values())).class_names
    if class_names:
        with tf.io.gfile.GFile(posixpath.join(out, folder.LABELS_FILE), "w") as f:
            f.write("".join(f"{name}\n" for name in class_names))
    for name, files in splits.items():
        _write_split(files, posixpath.join(out, name), examples_per_shard, jpeg_quality)
    return {name: len(files.paths) for name, files in splits.items()}


def _write_split(files: folder.FolderSplit, prefix: str, examples_per_shard: int, jpeg_quality: int) -> None:
    num_shards = math.ceil(len(files.paths) / examples_per_shard)
    images = _jpeg_bytes(files.paths, jpeg_quality)
    for shard, rows in enumerate(np.array_split(np.arange(len(files.paths)), num_shards)):
        with tf.io.TFRecordWriter(f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord") as writer:
            for row in rows:
                writer.write(_example(next(images), int(files.labels[row]), files.ids[row]))


def _jpeg_bytes(paths: tuple[str, ...], quality: int):
    """Each file's JPEG bytes, in order, read and converted in parallel."""
    def load(path):
        contents = tf.io.read_file(path)
        return tf.cond(tf.io.is_jpeg(contents), lambda: contents, lambda: tf.io.encode_jpeg(
            tf.io.decode_image(contents, channels=3, expand_animations=False), quality=quality))

    return tf.data.Dataset.from_tensor_slices(list(paths)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).as_numpy_iterator()


def _example(image: bytes, label: int, key: str) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def main(argv: list[str]) -> None:
    args = _parse_args(argv)
    data_cfg = folder_config(args.source, args.train_split, args.eval_split, args.eval_fraction, args.split_seed)
    counts = write_tfrecords(data_cfg, args.out, examples_per_shard=args.examples_per_shard,
                             jpeg_quality=args.jpeg_quality)
    for name, count in counts.items():
        print(f"{name}: {count} examples -> {args.out}/{name}-*.tfrecord")
    print(f"read it with --config.data.name=tfrecord --config.data.path={args.out} "
          f"(splits: {', '.join(counts)})")
