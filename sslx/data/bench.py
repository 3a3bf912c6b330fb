"""Input-pipeline throughput: `python -m sslx.data.bench --path DIR` prints views/s of the pretraining iterator.

The figure covers everything the trainer waits for: record reading, shuffling, JPEG decoding (unless
data_cfg.cache), two augmented views and the copy to numpy. In on_device mode the host only decodes (views counted
as the two the devices will make of each image) and `device_views_per_second` times the JAX augmentation itself.
`pil_views_per_second` times a plain per-image Pillow SimCLR pipeline on the same JPEGs as a peer (only where
Pillow is installed: it is no dependency of sslx), and `feed` says whether a host keeps a train step fed.
"""
from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import math
import os
import random
import statistics
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
    preset = preset or default_preset(image_size)
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
    del batches  # ends its prefetching threads, whose CPU time would count against the next measurement
    gc.collect()
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
    """Views/s of the jitted on-device augmentation (device_augment.augment_views) on JAX's default backend, for
    uint8 inputs of `input_shape` (what the on_device host pipeline ships); CPU seconds matter on the CPU backend."""
    preset = preset or default_preset(image_size)
    specs = (augment.PRESETS[preset](),) * 2
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, *input_shape, 3), np.uint8))
    two_views = jax.jit(device_augment.augment_views, static_argnums=(2, 3))
    sizes = (image_size, image_size)
    jax.block_until_ready(two_views(jax.random.key(0), images, specs, sizes))  # compile
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(two_views(jax.random.key(count), images, specs, sizes))
        count += 2 * batch
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"mode": "device augmentation", "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "views_per_second": round(count / elapsed), "views_per_cpu_second": round(count / cpu),
            "image_size": image_size, "input_shape": input_shape, "batch": batch, "preset": preset}


def stage_costs(data_cfg, image_size: int, local_batch: int, *, batches: int = 8,
                preset: str | None = None) -> dict:
    """CPU milliseconds per view of each stage of the host augmentation: first 'decode_crop', for variable-size
    JPEGs (the ImageNet path) the per-image windowed decode, crop, flip and resize of two views, or 'decode' for
    fixed-size images (CIFAR) the batch's decode (tf.data on every core); then, on those views or images one batch
    after another, what each stage of `augment.batch_stages` adds to the batch step as it runs (pieces in cache,
    blurred views first): 'pieces' taking the batch into pieces and back, then 'crop' (for cropped views only the
    float check), 'colour', 'blur' (the stages up to it timed, less those before it)."""
    import tensorflow as tf
    preset = preset or default_preset(image_size)
    spec = augment.PRESETS[preset]()
    source = sources.load_split(data_cfg, data_cfg.get("train_split", "train"))
    shape = sources.describe(data_cfg, data_cfg.get("train_split", "train")).image_shape
    if None not in shape[:2]:
        first, first_view = "decode", lambda batch: batch
        # The known size picks the crop's resize method, as in the pipeline (augment._crop_and_flip).
        batches_in = source.dataset.map(lambda example: tf.ensure_shape(example["image"], shape)).repeat().batch(
            local_batch)
    elif source.encoded is not None:
        first, first_view = "decode_crop", lambda views: views[0]
        seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([i, 0]))
        batches_in = tf.data.Dataset.zip((source.records.map(source.encoded).repeat(), seeds)).map(
            lambda example, seed: augment.random_crops(example["image"], (spec, spec), seed, (image_size,) * 2),
            num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch)
        spec, shape = augment.after_crop(spec), (image_size, image_size)
    else:
        raise ValueError(f"stage costs need fixed-size or encoded images; {data_cfg.get('path') or data_cfg.name} "
                         f"has neither")
    input_batches = iter(batches_in)
    costs = {first: _cpu_ms_per_view(lambda: next(input_batches), batches, 2 * local_batch)}
    images = first_view(next(input_batches))
    del input_batches  # its prefetching threads would run on during the timings below
    gc.collect()
    params = augment.sample_params(spec, tf.constant([1, 2], tf.int64), local_batch, shape[0], shape[1])
    stages = augment.batch_stages(spec, image_size)
    order = augment.piece_order(stages, params)
    names, before = ["pieces", *stages], 0.0
    for count, name in enumerate(names):
        upto = functools.partial(augment.run_stages, list(stages.values())[:count])
        run = tf.function(functools.partial(augment.in_pieces, upto, images, params, augment.piece_size(image_size),
                                            order))  # a graph, as in the tf.data pipeline
        total = _cpu_ms_per_view(lambda: run().numpy(), batches, local_batch)
        costs[name], before = round(total - before, 3), total
    return {"mode": "host augmentation stages", "image_size": image_size, "preset": preset, "dataset": data_cfg.name,
            "cpu_ms_per_view": costs, "total_cpu_ms_per_view": round(sum(costs.values()), 3)}


def _cpu_ms_per_view(make_batch, count: int, views_per_batch: int) -> float:
    """CPU milliseconds of this process per view over `count` calls of `make_batch`, after two."""
    for _ in range(2):
        make_batch()
    start = time.process_time()
    for _ in range(count):
        make_batch()
    return round((time.process_time() - start) * 1e3 / (count * views_per_batch), 3)


def imagenet_like_records(directory: str, count: int = 512, seed: int = 0) -> str:
    """Writes `count` JPEGs of ImageNet's typical sizes (shorter side 300-500 px, width / height log-uniform in
    [3/4, 3/2], quality 90) as DIRECTORY/train-00000-of-00001.tfrecord, cut from the two photographs bundled with
    scikit-learn (nothing is downloaded): a 224 px input benchmark on variable-size images, the ImageNet recipes'
    path."""
    from sklearn.datasets import load_sample_images
    import tensorflow as tf
    photos, rng = load_sample_images().images, np.random.default_rng(seed)
    with tf.io.TFRecordWriter(os.path.join(directory, "train-00000-of-00001.tfrecord")) as writer:
        for i in range(count):
            photo = photos[i % len(photos)]
            aspect, short = math.exp(rng.uniform(math.log(3 / 4), math.log(3 / 2))), int(rng.integers(300, 501))
            out = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
            # The largest region of that aspect in the photo, scaled by 50-100%, at a random place.
            fit = min(photo.shape[0] / out[0], photo.shape[1] / out[1]) * rng.uniform(0.5, 1.0)
            height, width = int(out[0] * fit), int(out[1] * fit)
            top, left = rng.integers(0, photo.shape[0] - height + 1), rng.integers(0, photo.shape[1] - width + 1)
            image = tf.image.resize(photo[top:top + height, left:left + width], out, antialias=True)
            jpeg = tf.io.encode_jpeg(tf.cast(tf.round(image), tf.uint8), quality=90).numpy()
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10]))})).SerializeToString())
    return directory


def pil_views_per_second(data_cfg, image_size: int, *, seconds: float = 10.0, preset: str | None = None,
                         max_images: int = 256) -> dict | None:
    """Views per CPU-second of a plain per-image Pillow SimCLR pipeline on one thread, None without Pillow.

    Per image: decode, shorter side resized to image_size * 8 / 7 (256 for 224); per view (two): random resized crop
    (area 8-100%, aspect 3/4-4/3, bilinear), flip, colour jitter with the preset's strength and probability
    (brightness, contrast, saturation, hue in a random order), grayscale, Gaussian blur with the preset's
    probability, then float32 in [0, 1]: what torchvision's or lightly's SimCLR transforms do.
    """
    try:
        from PIL import Image  # noqa: F401 (a peer, never a dependency)
    except ImportError:
        return None
    import tensorflow as tf
    spec = augment.PRESETS[preset or default_preset(image_size)]()
    source = sources.load_split(data_cfg, data_cfg.get("train_split", "train"))
    read = source.encoded or (lambda record: {"image": tf.io.encode_jpeg(source.decode(record)["image"])})
    jpegs = [example["image"] for example in source.records.take(max_images).map(read).as_numpy_iterator()]
    rng = random.Random(0)
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        count += len(_pil_two_views(jpegs[count // 2 % len(jpegs)], spec, image_size, rng))
    return {"mode": "Pillow per-image peer (1 thread)", "image_size": image_size,
            "views_per_cpu_second": round(count / (time.process_time() - start)),
            "preset": preset or default_preset(image_size), "dataset": data_cfg.name}


def _pil_two_views(jpeg: bytes, spec: augment.AugmentSpec, size: int, rng: random.Random) -> list[np.ndarray]:
    from PIL import Image
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    scale = round(size * 8 / 7) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    return [_pil_view(image, spec, size, rng) for _ in range(2)]


def _pil_view(image, spec: augment.AugmentSpec, size: int, rng: random.Random) -> np.ndarray:
    from PIL import Image, ImageFilter
    width, height = image.size
    box = (0, 0, width, height)
    for _ in range(augment.CROP_ATTEMPTS):
        area = width * height * rng.uniform(spec.crop_area_min, spec.crop_area_max)
        aspect = math.exp(rng.uniform(math.log(spec.aspect_min), math.log(spec.aspect_max)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            box = (left, top, left + w, top + h)
            break
    view = image.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < spec.flip_prob:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < spec.jitter_prob:
        view = _pil_jitter(view, spec, rng)
    if rng.random() < spec.grayscale_prob:
        view = view.convert("L").convert("RGB")
    if rng.random() < spec.blur_prob:
        view = view.filter(ImageFilter.GaussianBlur(rng.uniform(spec.blur_sigma_min, spec.blur_sigma_max)))
    return np.asarray(view, np.float32) / 255.0


def _pil_jitter(view, spec: augment.AugmentSpec, rng: random.Random):
    from PIL import Image, ImageEnhance
    strength = spec.jitter_strengths()

    def hue(image):
        h, s, v = image.convert("HSV").split()
        shift = round(rng.uniform(-strength["hue"], strength["hue"]) * 255)
        h = h.point(lambda x: (x + shift) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    def enhance(kind, amount):
        return lambda image: kind(image).enhance(rng.uniform(max(0.0, 1 - amount), 1 + amount))

    ops = [enhance(ImageEnhance.Brightness, strength["brightness"]), enhance(ImageEnhance.Contrast,
                                                                             strength["contrast"]),
           enhance(ImageEnhance.Color, strength["saturation"]), hue]
    rng.shuffle(ops)
    for op in ops:
        view = op(view)
    return view


# Host augmentation must deliver this much more than the step consumes: the same cores also run the training
# loop, host-to-device copies and checkpoint writes.
FEED_MARGIN = 1.25


def feed(host: dict, step_views_per_second: float, host_cores: int) -> dict:
    """Whether a host of `host_cores` CPUs keeps a step of `step_views_per_second` fed in `host`'s mode, from its
    views per CPU-second (tf.data scales about linearly with cores while decoding and augmenting dominate)."""
    host_views = host["views_per_cpu_second"] * host_cores
    return {"mode": host["mode"], "image_size": host["image_size"], "host_cores": host_cores,
            "host_views_per_second": round(host_views), "step_views_per_second": round(step_views_per_second),
            "bottleneck": "host" if host_views < FEED_MARGIN * step_views_per_second else "device",
            "host_over_step": round(host_views / step_views_per_second, 2)}


def choose(host_aug: dict, host_decode: dict) -> str:
    """The rule of docs/scaling.md: host augmentation where it keeps the step fed with FEED_MARGIN to spare (it costs
    the accelerators nothing), else on_device (if even decoding alone cannot keep up, more host cores are needed)."""
    if host_aug["bottleneck"] == "device":
        return "host augmentation (augment.on_device=False)"
    if host_decode["bottleneck"] == "device":
        return "augment.on_device=True"
    return "augment.on_device=True, and the host still limits the step: more CPU cores per device are needed"


def default_preset(image_size: int) -> str:
    """The augmentation the benchmarks time at `image_size`: SimCLR's CIFAR setting up to 64 px, ImageNet's above."""
    return "cifar" if image_size <= 64 else "imagenet"


def all_modes(data_cfg, image_size: int, local_batch: int, *, seconds: float = 10.0, rounds: int = 1) -> list[dict]:
    """Host augmentation, on_device's host side, the device augmentation of what that host side ships, and the
    Pillow peer where Pillow is installed.

    With `rounds` > 1, host augmentation and the peer are timed again, back to back, rounds - 1 more times, and the
    peer's `sslx_host_over_peer` is the median of the rounds' ratios: on a shared machine the CPU's speed drifts
    from one minute to the next, and a ratio of two timings minutes apart drifts with it."""
    results = [pipeline_views_per_second(data_cfg, image_size, local_batch, seconds=seconds, on_device=on_device)
               for on_device in (False, True)]
    shape = sources.describe(data_cfg, data_cfg.get("train_split", "train")).image_shape
    input_shape = tuple(side or pipeline.default_host_size(image_size) for side in shape[:2])
    results.append(device_views_per_second(input_shape, image_size, local_batch, seconds=seconds))
    peer = pil_views_per_second(data_cfg, image_size, seconds=seconds)
    if peer:
        pairs = [(results[0], peer)] + [
            (pipeline_views_per_second(data_cfg, image_size, local_batch, seconds=seconds),
             pil_views_per_second(data_cfg, image_size, seconds=seconds)) for _ in range(rounds - 1)]
        ratios = [host["views_per_cpu_second"] / other["views_per_cpu_second"] for host, other in pairs]
        peer["sslx_host_over_peer"] = round(statistics.median(ratios), 2)
        if rounds > 1:
            peer["rounds"] = [{"sslx_host": host["views_per_cpu_second"], "peer": other["views_per_cpu_second"],
                               "ratio": round(ratio, 2)} for (host, other), ratio in zip(pairs, ratios)]
        results.append(peer)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="directory of train-*.tfrecord files (JPEG images)")
    parser.add_argument("--image_size", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--local_batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="host augmentation and the Pillow peer back to back, "
                                                                "this many times (median ratio)")
    parser.add_argument("--cache", action="store_true", help="decode once and keep the images in memory")
    parser.add_argument("--stages", action="store_true",
                        help="instead: CPU ms per view of each host augmentation stage")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds}: need at least 1 round")
    cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": args.path, "shuffle_buffer": 10_000,
                                     "cache": args.cache, "num_classes": -1})
    if args.stages:
        for image_size in args.image_size:
            print(json.dumps(stage_costs(cfg, image_size, args.local_batch)), flush=True)
        return
    for image_size in args.image_size:
        for result in all_modes(cfg, image_size, args.local_batch, seconds=args.seconds, rounds=args.rounds):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
