"""Input-pipeline throughput: `python -m sslx.data.bench --path DIR` prints views/s of the pretraining iterator.

The figure covers everything the trainer waits for: record reading, shuffling, JPEG decoding (unless
data_cfg.cache), two augmented views and the copy to numpy. In on_device mode the host only decodes (views counted
as the two the devices will make of each image) and `device_views_per_second` times the JAX augmentation itself.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import ml_collections
import numpy as np

from sslx.data import augment, device_augment, pipeline, sources


def pipeline_views_per_second(data_cfg, image_size: int, local_batch: int, *, seconds: float = 10.0,
                              preset: str | None = None, warmup_batches: int = 20, on_device: bool = False) -> dict:
    """Views/s (2 per example) of `pretrain_iterator` after `warmup_batches`: wall-clock overall and per usable
    core, and per CPU second used.

    `preset` picks both views' augmentation; by default 'cifar' up to 64 px and 'imagenet' (with blur) above.
    """
    preset = preset or _default_preset(image_size)
    specs = (augment.PRESETS[preset](),) * 2
    batches = pipeline.pretrain_iterator(data_cfg, specs, local_batch=local_batch, image_size=image_size, seed=0,
                                         on_device=on_device)
    for _ in range(warmup_batches):  # fills the shuffle buffer, compiles, lets autotune settle
        next(batches)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        count += len(next(batches)["label"])
    views = 2 * count / (time.perf_counter() - start)
    # CPU seconds of all this process's threads: a per-core rate that holds up when other jobs share the cores.
    views_per_cpu_second = 2 * count / (time.process_time() - cpu_start)
    cores = len(os.sched_getaffinity(0))
    source_shape = sources.describe(data_cfg, data_cfg.get("train_split", "train")).image_shape
    return {"views_per_second": round(views), "views_per_second_per_core": round(views / cores),
            "views_per_cpu_second": round(views_per_cpu_second), "cores": cores, "load_average": os.getloadavg()[0],
            "image_size": image_size, "source_image_shape": source_shape,
            "upsampled": any(side is not None and side < image_size for side in source_shape[:2]),
            "local_batch": local_batch, "cache": bool(data_cfg.get("cache", False)), "preset": preset,
            "dataset": data_cfg.name, "mode": "host decode only (on_device)" if on_device else "host augmentation"}


def device_views_per_second(input_shape: tuple[int, int], image_size: int, batch: int, *, seconds: float = 10.0,
                            preset: str | None = None) -> dict:
    """Views/s of the jitted on-device augmentation (device_augment.two_views) on JAX's default backend, for
    uint8 inputs of `input_shape` (what the on_device host pipeline ships); CPU seconds matter on the CPU backend."""
    preset = preset or _default_preset(image_size)
    specs = (augment.PRESETS[preset](),) * 2
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, *input_shape, 3), np.uint8))
    two_views = jax.jit(device_augment.two_views, static_argnums=(2, 3))
    jax.block_until_ready(two_views(jax.random.key(0), images, specs, image_size))  # compile
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(two_views(jax.random.key(count), images, specs, image_size))
        count += 2 * batch
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"mode": "device augmentation", "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "views_per_second": round(count / elapsed), "views_per_cpu_second": round(count / cpu),
            "image_size": image_size, "input_shape": input_shape, "batch": batch, "preset": preset}


def _default_preset(image_size: int) -> str:
    return "cifar" if image_size <= 64 else "imagenet"


def all_modes(data_cfg, image_size: int, local_batch: int, *, seconds: float = 10.0) -> list[dict]:
    """Host augmentation, on_device's host side, and the device augmentation of what that host side ships."""
    results = [pipeline_views_per_second(data_cfg, image_size, local_batch, seconds=seconds, on_device=on_device)
               for on_device in (False, True)]
    shape = sources.describe(data_cfg, data_cfg.get("train_split", "train")).image_shape
    input_shape = tuple(side or pipeline.default_host_size(image_size) for side in shape[:2])
    return results + [device_views_per_second(input_shape, image_size, local_batch, seconds=seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="directory of train-*.tfrecord files (JPEG images)")
    parser.add_argument("--image_size", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--local_batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cache", action="store_true", help="decode once and keep the images in memory")
    args = parser.parse_args()
    cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": args.path, "shuffle_buffer": 10_000,
                                     "cache": args.cache, "num_classes": -1})
    for image_size in args.image_size:
        for result in all_modes(cfg, image_size, args.local_batch, seconds=args.seconds):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
