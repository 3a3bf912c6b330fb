"""A trained workdir as an image encoder: `load_encoder(workdir).embed(images)` -> NumPy features.

Images go through the run's own evaluation preprocessing (sslx.data.augment.eval_preprocess, with the centre crop
sslx.data.eval_iterator takes for the run's data) and the frozen network in eval mode (sslx.evaluators.encoders),
batched over this process's devices.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from etils import epath
from jax.sharding import Mesh

from sslx import parallel
from sslx.data import augment, sources
from sslx.evaluators.encoders import Trained, check_head_layer, embed, load_pretrained

# What tf.io.decode_image reads; the extensions sslx-embed collects from a directory.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_BATCH_SIZE = 256

Images = np.ndarray | Sequence[np.ndarray] | Sequence[str | os.PathLike]


@dataclasses.dataclass
class Encoder:
    """A frozen encoder (optionally up to projection-head layer `head_layer`) with its preprocessing."""
    pretrained: Trained
    head_layer: int
    crop_fraction: float   # centre crop of the shorter side before resizing to image_size
    mesh: Mesh
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self):
        config, layer = self.pretrained.config, self.head_layer
        self._apply = jax.jit(lambda variables, images: embed(config, variables, images, layer))

    @property
    def config(self):
        """The pretraining config (the workdir's config.json)."""
        return self.pretrained.config

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def dim(self) -> int:
        shape = jax.eval_shape(self._apply, self.pretrained.variables,
                               jax.ShapeDtypeStruct((1, self.image_size, self.image_size, 3), np.float32))
        return int(shape.shape[-1])

    def preprocess(self, images: Images) -> Iterator[np.ndarray]:
        """Batches of at most `batch_size` float32 [b, S, S, 3] model inputs in [0, 1], in input order."""
        size, crop = self.image_size, self.crop_fraction
        if isinstance(images, np.ndarray) or (hasattr(images, "shape") and hasattr(images, "dtype")):
            images = np.asarray(images)
            _check_array(images)
            for start in range(0, len(images), self.batch_size):
                yield augment.eval_preprocess(images[start:start + self.batch_size], size, crop).numpy()
            return
        images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if all(isinstance(image, (str, os.PathLike)) for image in images):
            yield from _file_batches([os.fspath(image) for image in images], size, crop, self.batch_size)
            return
        # A list of arrays of differing sizes: each is cropped and resized on its own.
        for start in range(0, len(images), self.batch_size):
            chunk = [np.asarray(image) for image in images[start:start + self.batch_size]]
            for image in chunk:
                _check_array(image[None])
            yield np.stack([augment.eval_preprocess(image, size, crop).numpy() for image in chunk])

    def embed(self, images: Images) -> np.ndarray:
        """Features float32 [N, dim] of `images`: uint8 [N,H,W,3] (0..255), float [N,H,W,3] in [0, 1], a list of
        such [H,W,3] arrays of any sizes, or a list of image file paths (JPEG, PNG, BMP, GIF; local or gs://)."""
        outputs = [self._embed_batch(batch) for batch in self.preprocess(images)]
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(outputs)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """One batch, padded to a multiple of the device count so it splits evenly over the mesh."""
        rows = len(batch)
        padded = parallel.round_up(rows, self.mesh.size)
        batch = np.concatenate([batch, np.zeros((padded - rows, *batch.shape[1:]), batch.dtype)])
        features = self._apply(self.pretrained.variables, jax.device_put(batch, parallel.batch_sharded(self.mesh)))
        return np.asarray(features)[:rows]


def load_encoder(workdir: str | os.PathLike, step: int | None = None, head_layer: int = 0, *,
                 batch_size: int = DEFAULT_BATCH_SIZE, crop_fraction: float | None = None) -> Encoder:
    """The encoder of a pretraining (or imported) workdir at checkpoint `step` (None: the latest).

    `head_layer` 0 gives the encoder's pooled features, i > 0 the output of projection-head layer i (SimCLRv2
    fine-tunes from layer 1). `crop_fraction` None takes the run's evaluation crop. Works for every method: only
    the online encoder and head are read (for BYOL and MoCo the network that linear evaluation uses, not the EMA
    target). Runs on this process's devices.
    """
    mesh = parallel.make_mesh(jax.local_devices())
    pretrained = load_pretrained(os.fspath(workdir), step, mesh)
    check_head_layer(pretrained.config, head_layer, "head_layer")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if crop_fraction is None:
        crop_fraction = run_crop_fraction(pretrained.config)
    elif not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction={crop_fraction} must lie in (0, 1]")
    return Encoder(pretrained, head_layer, crop_fraction, mesh, parallel.round_up(batch_size, mesh.size))


def run_crop_fraction(config) -> float:
    """The centre crop that the run's evaluation took: from the shape of its eval split's images where that data
    is readable here, else (a workdir copied away from its data) from config.data.image_size, which for every
    fixed-size data set sslx reads equals the image side."""
    try:
        shape = sources.describe(config.data, config.data.get("eval_split", "test")).image_shape
    except (OSError, ValueError, tf.errors.OpError) as error:
        shape = (config.data.image_size, config.data.image_size, 3)
        logging.info("run data not readable (%s); eval crop from config.data.image_size", error)
    return augment.eval_crop_fraction(shape)


def image_files(pattern: str) -> list[str]:
    """The image files under a directory (recursively, sorted), or those matching a glob; local or gs://."""
    if tf.io.gfile.isdir(pattern):
        found = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(pattern)
                 for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [path for path in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(path)]
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in or matching {pattern!r}: pass "
                                f"a directory or a glob such as 'photos/*.jpg'")
    return sorted(found)


def _check_array(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] RGB (or a list of [H, W, 3]), got shape {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 in 0..255 or float in [0, 1], got dtype {images.dtype}")


def _file_batches(paths: list[str], size: int, crop: float, batch_size: int) -> Iterator[np.ndarray]:
    missing = next((path for path in paths if not tf.io.gfile.exists(path)), None)
    if missing is not None:
        raise FileNotFoundError(f"image file {missing} does not exist")

    def load(path):
        # channels=3: grey images are repeated, an alpha channel dropped, as the training sources decode.
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return augment.eval_preprocess(image, size, crop)

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    yield from dataset.batch(batch_size).prefetch(2).as_numpy_iterator()


def write_embeddings(workdir: str, images: str, out: str, *, step: int | None = None, head_layer: int = 0,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, list[str]]:
    """`sslx-embed`: the features of every image under `images` saved to `out` (.npy, row i = line i of the file
    list written beside it with the suffix .txt)."""
    out_path = epath.Path(out)
    if out_path.suffix != ".npy":
        raise ValueError(f"--out {out} must end in .npy (the features; the file list goes beside it as .txt)")
    paths = image_files(images)
    encoder = load_encoder(workdir, step, head_layer, batch_size=batch_size)
    features = encoder.embed(paths)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as f:
        np.save(f, features)
    out_path.with_suffix(".txt").write_text("".join(f"{path}\n" for path in paths))
    return features, paths


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sslx-embed", description="Features of a folder of images from a trained "
                                     "workdir's encoder, with the run's evaluation preprocessing.")
    parser.add_argument("--workdir", required=True, help="pretraining (or sslx-import-simclr) workdir")
    parser.add_argument("--images", required=True, help="a directory (searched recursively) or a glob")
    parser.add_argument("--out", required=True, help="features file (.npy); the file list goes to the same name .txt")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--head-layer", type=int, default=0, help="0: encoder output; i: projection-head layer i")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per batch over all devices (rounded up to a multiple of the device count)")
    args = parser.parse_args(argv)
    features, paths = write_embeddings(args.workdir, args.images, args.out, step=args.step,
                                       head_layer=args.head_layer, batch_size=args.batch_size)
    print(f"sslx-embed: {features.shape[0]} images -> {args.out} {features.shape}, file list "
          f"{epath.Path(args.out).with_suffix('.txt')}")
