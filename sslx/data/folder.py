"""A directory of JPEG/PNG images as a data set (`config.data.name = "folder"`, `config.data.path = DIR`).

Layouts (torchvision's ImageFolder convention, plus an unlabelled flat folder):
  DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg    splits by subfolder (named by config.data.train_split and
                                                    config.data.eval_split), labels by class subfolder
  DIR/<class>/*.png                                 labels by class subfolder; config.data.eval_fraction of each
                                                    class is held out (seeded by config.data.split_seed)
  DIR/*.jpg                                         unlabelled (label -1); held out the same way
Class ids are positions in the sorted class-folder names, or in DIR/labels.txt (one name a line, as the tfrecord
source reads it) where that exists. Listing goes through tf.io.gfile, so a bucket path works like a local one.
"""
from __future__ import annotations

import dataclasses
import functools
import posixpath
import struct

import numpy as np
import tensorflow as tf

EXTENSIONS = (".jpg", ".jpeg", ".png")
LABELS_FILE = "labels.txt"
_SHAPE_PROBE = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """One split's images in read order: a seeded permutation of the sorted listing, so that a shuffle buffer
    sees every class even when the folder is sorted by class."""
    paths: tuple[str, ...]
    labels: np.ndarray          # int32, -1 where unlabelled
    ids: tuple[str, ...]        # paths relative to the folder: stable keys for subsets and conversion
    class_names: tuple[str, ...]  # empty when unlabelled


def split_files(data_cfg, split: str) -> FolderSplit:
    """The images of `split` of the folder that data_cfg describes."""
    if not data_cfg.get("path"):
        raise ValueError("config.data.name='folder' needs config.data.path=<directory of JPEG/PNG images>.")
    fraction = float(data_cfg.get("eval_fraction", 0.1))
    if not 0 <= fraction < 1:
        raise ValueError(f"config.data.eval_fraction={fraction} must lie in [0, 1): the share of a folder without "
                         f"split subfolders held out as config.data.eval_split.")
    return _split_files(str(data_cfg.path).rstrip("/"), split, data_cfg.get("train_split", "train"),
                        data_cfg.get("eval_split", "test"), fraction, int(data_cfg.get("split_seed", 0)))


def split_names(data_cfg) -> list[str]:
    """Every split the folder holds: its split subfolders, else the train and held-out eval split."""
    root = str(data_cfg.path).rstrip("/")
    train_split, eval_split = data_cfg.get("train_split", "train"), data_cfg.get("eval_split", "test")
    if not tf.io.gfile.isdir(posixpath.join(root, train_split)):
        return [train_split, eval_split] if float(data_cfg.get("eval_fraction", 0.1)) > 0 else [train_split]
    return [name for name in _subfolders(root) if _images_under(posixpath.join(root, name))]


def read_file(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """{'path', 'label'} -> {'image': the file's bytes, 'label'}."""
    return {"image": tf.io.read_file(record["path"]), "label": record["label"]}


def decode_file(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """{'path', 'label'} -> {'image': uint8 [H,W,3], 'label'} (JPEG or PNG, greyscale and RGBA to RGB)."""
    image = tf.io.decode_image(read_file(record)["image"], channels=3, expand_animations=False)
    return {"image": image, "label": record["label"]}


def image_shape(files: FolderSplit) -> tuple[int | None, int | None, int]:
    """(H, W, 3) from the headers of up to 64 images (a random sample: the read order is shuffled); None
    where they differ, which sends the pipeline down its per-image crop path."""
    return _probe_shape(files.paths[:_SHAPE_PROBE])


@functools.cache
def _probe_shape(paths: tuple[str, ...]) -> tuple[int | None, int | None, int]:
    sizes = np.array([_height_width(path) for path in paths])
    height, width = (int(sizes[0, i]) if (sizes[:, i] == sizes[0, i]).all() else None for i in range(2))
    return height, width, 3


@functools.cache
def _split_files(root: str, split: str, train_split: str, eval_split: str, eval_fraction: float,
                 split_seed: int) -> FolderSplit:
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"config.data.path={root!r} is not a directory: point it at a folder of "
                                f"JPEG/PNG images.")
    if tf.io.gfile.isdir(posixpath.join(root, train_split)):  # split by subfolder
        if not tf.io.gfile.isdir(posixpath.join(root, split)):
            raise ValueError(f"folder {root} has split subfolders {_subfolders(root)}, not {split!r}: set "
                             f"config.data.train_split/eval_split to two of them.")
        class_names = _class_names(root, posixpath.join(root, train_split))
        paths, labels = _list_images(posixpath.join(root, split), class_names)
    else:
        if split not in (train_split, eval_split):
            raise ValueError(f"folder {root} has no split subfolders, so its splits are "
                             f"config.data.train_split={train_split!r} and the held-out config.data.eval_split="
                             f"{eval_split!r}, not {split!r}.")
        class_names = _class_names(root, root)
        paths, labels = _list_images(root, class_names)
        held = held_out(labels, eval_fraction, split_seed)
        keep = held if split == eval_split else ~held
        paths, labels = [p for p, k in zip(paths, keep) if k], labels[keep]
        if not paths:
            raise ValueError(f"split {split!r} of folder {root} is empty: set config.data.eval_fraction in (0, 1) "
                             f"(now {eval_fraction}) or add train/ and val/ subfolders.")
    order = np.random.default_rng(split_seed).permutation(len(paths))
    paths = [paths[i] for i in order]
    ids = tuple(posixpath.relpath(p, root) for p in paths)
    return FolderSplit(tuple(paths), labels[order], ids, tuple(class_names))


def held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of round(fraction x count) examples of every label (unlabelled -1 counts as one), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held[rng.choice(members, size=int(round(fraction * len(members))), replace=False)] = True
    return held


def _subfolders(directory: str) -> list[str]:
    return sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(directory)
                  if not entry.startswith(".") and tf.io.gfile.isdir(posixpath.join(directory, entry)))


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def _images_under(directory: str) -> list[str]:
    """Every image below `directory`, sorted (class folders may nest, as ImageFolder allows; hidden folders such
    as .ipynb_checkpoints are skipped)."""
    return sorted(posixpath.join(parent, name) for parent, _, names in tf.io.gfile.walk(directory)
                  if not any(part.startswith(".") for part in posixpath.relpath(parent, directory).split("/")
                             if part != ".")
                  for name in names if _is_image(name))


def _class_names(root: str, class_root: str) -> list[str]:
    """Sorted class subfolders of `class_root`, or the order of root/labels.txt; [] for a flat folder."""
    found = _subfolders(class_root)
    labels_txt = posixpath.join(root, LABELS_FILE)
    if not found or not tf.io.gfile.exists(labels_txt):
        return found
    with tf.io.gfile.GFile(labels_txt) as f:
        names = [line.strip() for line in f if line.strip()]
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"class folders {unknown[:5]} of {class_root} are not listed in {labels_txt}: add them "
                         f"there or delete that file to number the sorted folder names.")
    return names


def _list_images(directory: str, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    loose = sorted(posixpath.join(directory, name) for name in tf.io.gfile.listdir(directory) if _is_image(name))
    subfolders = _subfolders(directory)
    if not class_names:
        if not loose:
            raise FileNotFoundError(f"no JPEG or PNG images ({', '.join(EXTENSIONS)}) in {directory} "
                                    f"(config.data.path).")
        return loose, np.full(len(loose), -1, np.int32)
    if loose:
        raise ValueError(f"{directory} holds loose images ({posixpath.basename(loose[0])}, ...) but the data set "
                         f"has class folders: put every image in a class subfolder.")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in subfolders if name not in index]
    if unknown:
        raise ValueError(f"class folders {unknown[:5]} of {directory} are not classes of the train split "
                         f"{sorted(index)[:5]}...: every split needs the same class folders.")
    paths, labels = [], []
    for name in subfolders:
        images = _images_under(posixpath.join(directory, name))
        paths += images
        labels += [index[name]] * len(images)
    if not paths:
        raise FileNotFoundError(f"no JPEG or PNG images ({', '.join(EXTENSIONS)}) in the class folders of "
                                f"{directory} (config.data.path).")
    return paths, np.array(labels, np.int32)


def _height_width(path: str) -> tuple[int, int]:
    with tf.io.gfile.GFile(path, "rb") as f:
        contents = f.read()
    if contents.startswith(_PNG_SIGNATURE):  # the IHDR chunk: width, height as big-endian uint32
        width, height = struct.unpack(">II", contents[16:24])
        return height, width
    return tuple(int(side) for side in tf.io.extract_jpeg_shape(contents)[:2].numpy())
