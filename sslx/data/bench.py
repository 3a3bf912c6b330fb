"""Input-pipeline throughput: `python -m sslx.data.bench --path DIR` prints views/s of the pretraining iterator.

The figure covers everything the trainer waits for: record reading, shuffling, JPEG decoding (unless
data_cfg.cache), two augmented views and the copy to numpy.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import ml_collections

from sslx.data import augment, pipeline, sources


def pipeline_views_per_second(data_cfg, image_size: int, local_batch: int, *, seconds: float = 10.0,
                              preset: str | None = None, warmup_batches: int = 20) -> dict:
    """Views/s (2 per example) of `pretrain_iterator` after `warmup_batches`: wall-clock overall and per usable
    core, and per CPU second used.

    `preset` picks both views' augmentation; by default 'cifar' up to 64 px and 'imagenet' (with blur) above.
    """
    preset = preset or ("cifar" if image_size <= 64 else "imagenet")
    specs = (augment.PRESETS[preset](),) * 2
    batches = pipeline.pretrain_iterator(data_cfg, specs, local_batch=local_batch, image_size=image_size, seed=0)
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
            "dataset": data_cfg.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="directory of train-*.tfrecord files (JPEG images)")
    parser.add_argument("--image_size", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--local_batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    for image_size in args.image_size:
        for cache in (False, True):
            cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": args.path, "shuffle_buffer": 10_000,
                                             "cache": cache, "num_classes": -1})
            result = pipeline_views_per_second(cfg, image_size, args.local_batch, seconds=args.seconds)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
