"""`sslx-benchmark`: input-pipeline views/s and train-step img/s next to a plain Flax step, in one run.

    sslx-benchmark --data-path ../shared/data/cifar10            # input pipeline + both models
    sslx-benchmark --skip-input --models resnet18_cifar:128       # one train-step figure
    sslx-benchmark --skip-input --models '' --recipes configs/byol_cifar10.py:512,configs/mocov2_cifar10.py:512
    sslx-benchmark --skip-input --models resnet50:256 --dtype bfloat16 --on-device-aug   # + views made on device

The plain step is what a Flax user writes by hand for the same model and loss on one device: encoder +
head, NT-Xent, LARS, `jax.jit(value_and_grad)`. The sslx step is `sslx.train.make_train_step` (shard_map
over the mesh, online probe, metrics). Both get the same device-resident synthetic batch, so the ratio is
the framework's overhead, not the input pipeline's. `--recipes` times the sslx step of any recipe file (its
method, heads, optimizer, model and image size) the same way, to compare methods. Each step figure comes with
its model FLOPs utilisation: the compiled step's FLOPs per device (XLA's cost analysis) per second over the
device's dense bfloat16 peak (PEAK_FLOPS; n/a where unknown, e.g. CPU). With --on-device-aug the same compiled
step is timed again fed as `augment.on_device` feeds it, and `on_device_aug_overhead` is the share of step time the
on-device augmentation adds.

The input benchmark runs at 32 px on --data-path (CIFAR-10) and at 224 px on --data-path-224 (default: ImageNet-
sized JPEGs written to a temporary directory), with a Pillow per-image peer where Pillow is installed. Then, per
image size, `feed` weighs the views/s a host of --host-cores CPUs can make against the views/s the step consumes
(--step-img-per-s, default: the measured step at that size) and names the bottleneck (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

MODELS = {  # name -> (encoder, cifar stem, image size)
    "resnet18_cifar": ("resnet18", True, 32),
    "resnet50": ("resnet50", False, 224),
}
# Dense bfloat16 matrix-unit peak FLOP/s of one JAX device, by device kind (first match wins, so the specific
# names come first): the vendors' data sheets. A TPU v2/v3 device is one TensorCore, half a chip; later TPUs and
# GPUs are one device per chip (H100: SXM; PCIe listed apart).
PEAK_FLOPS = (("TPU v2", 22.5e12), ("TPU v3", 61.5e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
              ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("H100 PCIe", 756e12), ("H100", 989e12),
              ("H200", 989e12), ("A100", 312e12), ("L4", 121e12))


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sslx-benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", default="../shared/data/cifar10",
                        help="directory of {split}-*.tfrecord JPEG files for the 32 px input benchmark")
    parser.add_argument("--data-path-224", default="",
                        help="TFRecords for the 224 px input benchmark, e.g. ImageNet's (default: 512 ImageNet-sized "
                             "JPEGs cut from scikit-learn's sample photos, written to a temporary directory)")
    parser.add_argument("--host-cores", type=int, default=0,
                        help="CPU cores of the host to judge the input feed for (0: this machine's)")
    parser.add_argument("--step-img-per-s", default="",
                        help="comma-separated IMAGE_SIZE:IMG_PER_S, the img/s of the train step one host feeds "
                             "(e.g. 224:10000 for 4 accelerators at 2,500 img/s) to judge the input against "
                             "(default: the step measured here at that size)")
    parser.add_argument("--skip-input", action="store_true", help="skip the input-pipeline benchmark")
    parser.add_argument("--input-batch", type=int, default=256)
    parser.add_argument("--models", default="resnet18_cifar:128,resnet50:32",
                        help="comma-separated MODEL:GLOBAL_BATCH pairs; MODEL in " + ", ".join(MODELS))
    parser.add_argument("--recipes", default="",
                        help="comma-separated RECIPE_FILE:GLOBAL_BATCH pairs (configs/*.py): each recipe's sslx step")
    parser.add_argument("--devices", type=int, default=0, help="devices for the sslx step (0: all)")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="simulate this many CPU devices (sets XLA_FLAGS before JAX starts)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="compute dtype (default: float32 for --models, each recipe's own for --recipes)")
    parser.add_argument("--on-device-aug", action="store_true",
                        help="also time each step fed as augment.on_device feeds it (views made on the devices from "
                             "the uint8 images the host ships) and report its overhead over the synthetic step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per input-pipeline measurement")
    parser.add_argument("--input-rounds", type=int, default=1,
                        help="time host augmentation and the Pillow peer back to back this many times and report the "
                             "median ratio (steadier on a shared machine)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.input_rounds < 1:
        parser.error(f"--input-rounds={args.input_rounds}: need at least 1 round")
    return args


def _model_config(model: str, dtype: str):
    from sslx.config import base_config
    from sslx.data import bench
    encoder, cifar_stem, size = MODELS[model]
    config = base_config()
    config.model.name, config.model.cifar_stem, config.model.dtype = encoder, cifar_stem, dtype
    config.data.image_size = size
    config.augment.preset = bench.default_preset(size)  # the views --on-device-aug makes
    config.loss.temperature = 0.1
    return config


def _time_steps(step, state, batch, steps: int) -> tuple[float, object]:
    """Seconds per step after two warm-up (compile) steps, and the state after them (a donated input state is
    gone); blocks on the state to include all work."""
    import jax
    for _ in range(2):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps, state


def compile_with_flops(jitted, *args):
    """`jitted` compiled for `args`, and the FLOPs of one call on one device from XLA's cost analysis of that
    compiled (per-device) program."""
    compiled = jitted.lower(*args).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # one dict per program before 0.4.3x
    return compiled, float(analysis.get("flops", 0.0))


def mfu(flops_per_device: float, seconds: float, device_kind: str) -> float | str:
    """Model FLOPs utilisation against the device's dense bf16 peak; "n/a" for devices without a known peak."""
    peak = next((value for name, value in PEAK_FLOPS if name in device_kind), None)
    if peak is None or flops_per_device <= 0:
        return "n/a"
    return round(flops_per_device / seconds / peak, 4)


def plain_flax_step_seconds(config, batch: dict, steps: int) -> tuple[float, float]:
    """Seconds and FLOPs of a hand-written single-device Flax step for the same encoder + head + NT-Xent + LARS."""
    import jax
    import jax.numpy as jnp
    import optax
    from sslx.losses import nt_xent
    from sslx.models import build_encoder, build_head

    encoder, head = build_encoder(config.model, None), build_head(config, None)

    def forward(variables, images):
        (features, enc_updates) = encoder.apply(variables["encoder"], images, train=True, mutable=["batch_stats"])
        (z, _), head_updates = head.apply(variables["head"], features, train=True, mutable=["batch_stats"])
        return z, {"encoder": enc_updates, "head": head_updates}

    images = jnp.concatenate(batch["views"])
    rng = jax.random.key(0)
    enc_vars = encoder.init(rng, images[:2], train=True)
    head_vars = head.init(rng, jnp.zeros((2, encoder.apply(enc_vars, images[:2], train=False).shape[-1])),
                          train=True)
    variables = {"encoder": enc_vars, "head": head_vars}
    optimizer = optax.lars(0.1, weight_decay=1e-6, weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
                           trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    params = {k: v["params"] for k, v in variables.items()}
    stats = {k: v["batch_stats"] for k, v in variables.items()}
    state = (params, stats, optimizer.init(params))
    n = batch["views"][0].shape[0]

    @jax.jit
    def step(state, images):
        params, stats, opt_state = state

        def loss_fn(params):
            variables = {k: {"params": params[k], "batch_stats": stats[k]} for k in params}
            z, updates = forward(variables, images)
            return nt_xent(z[:n], z[n:], temperature=0.1).loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        delta, opt_state = optimizer.update(grads, opt_state, params)
        new_stats = {k: updates[k]["batch_stats"] for k in updates}
        return (optax.apply_updates(params, delta), new_stats, opt_state), loss

    compiled, flops = compile_with_flops(step, state, images)
    return _time_steps(compiled, state, images, steps)[0], flops


def sslx_step_seconds(config, batch: dict, num_devices: int, steps: int,
                      on_device: bool = False) -> tuple[float, float, float | None]:
    """Seconds per step and FLOPs per device of `sslx.train.make_train_step` over `num_devices`, and with
    `on_device` the seconds per step fed as `config.augment.on_device` feeds it, timed right after with the same
    compiled step: views made on the devices (`device_augment.make_views`) from the uint8 images the host ships
    (`on_device_input_shape`), then the step, as the pretraining loop does."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sslx import optim, parallel
    from sslx.config import view_sizes
    from sslx.data import device_augment, spec_from_config
    from sslx.methods import build_method
    from sslx.train import create_train_state, make_train_step

    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    schedule = optim.warmup_cosine(0.1, 10, 1000)
    optimizer = optim.make_optimizer(config.optim, schedule)
    # Settings given in epochs (DINO's teacher temperature warm-up) count 100 steps per epoch here.
    method = build_method(config, num_classes=10, total_steps=1000, steps_per_epoch=100)
    size = config.data.image_size
    state = create_train_state(method, optimizer, jax.random.key(0), jnp.zeros((2, size, size, 3)))
    train_step = make_train_step(method, optimizer, schedule, mesh)
    rng = jax.random.key(1)
    state, batch = parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
    compiled, flops = compile_with_flops(train_step, state, batch, rng)
    seconds, state = _time_steps(lambda s, b: compiled(s, b, rng), state, batch, steps)
    if not on_device:
        return seconds, flops, None
    make_views = device_augment.make_views(spec_from_config(config.augment), view_sizes(config.augment, size), mesh)
    images = np.random.default_rng(0).integers(0, 256, (len(batch["label"]), *on_device_input_shape(config), 3),
                                               np.uint8)
    key = jax.random.key(2)

    def step(state, shipped):
        return compiled(state, {"views": make_views(key, shipped), "label": batch["label"]}, rng)

    return seconds, flops, _time_steps(step, state, parallel.shard_batch(images, mesh), steps)[0]


def on_device_input_shape(config) -> tuple[int, int]:
    """The uint8 images the on_device host side ships for `config`: CIFAR-sized images (up to 64 px) as they are,
    larger ones (ImageNet's) as squares of augment.host_size (default: image_size * 8 / 7, 256 for 224)."""
    from sslx.data import pipeline
    size = config.data.image_size
    side = size if size <= 64 else (config.augment.get("host_size", 0) or pipeline.default_host_size(size))
    return side, side


def _on_device_figures(config, global_batch: int, synthetic: float, on_device: float, flops: float,
                       kind: str) -> dict:
    """The step with on-device augmentation next to the synthetic-batch step it otherwise equals (seconds per
    step of each): img/s, MFU and the overhead, the fraction of step time the augmentation adds."""
    return {"on_device_aug_input": list(on_device_input_shape(config)),
            "on_device_aug_img_per_s": global_batch / on_device, "on_device_aug_mfu": mfu(flops, on_device, kind),
            "on_device_aug_overhead": round(on_device / synthetic - 1.0, 4)}


def synthetic_batch(global_batch: int, sizes: tuple[int, ...]) -> dict:
    """Random float32 views of the given sides (a recipe's `config.view_sizes`: two, or a multi-crop's) and
    labels."""
    import numpy as np
    rng = np.random.default_rng(0)
    return {"views": tuple(rng.uniform(size=(global_batch, size, size, 3)).astype(np.float32) for size in sizes),
            "label": rng.integers(0, 10, size=(global_batch,)).astype(np.int32)}


def step_benchmark(model: str, global_batch: int, args: argparse.Namespace) -> dict:
    import jax
    num_devices = args.devices or jax.device_count()
    dtype = args.dtype or "float32"
    config = _model_config(model, dtype)
    batch = synthetic_batch(global_batch, (config.data.image_size,) * 2)
    plain, plain_flops = plain_flax_step_seconds(config, batch, args.steps)
    sslx, sslx_flops, on_device = sslx_step_seconds(config, batch, num_devices, args.steps, args.on_device_aug)
    kind = jax.devices()[0].device_kind
    figures = {"model": model, "global_batch": global_batch, "image_size": config.data.image_size,
               "devices": num_devices, "dtype": dtype, "device_kind": kind,
               "sslx_img_per_s": global_batch / sslx, "sslx_mfu": mfu(sslx_flops, sslx, kind),
               "plain_flax_img_per_s": global_batch / plain, "plain_flax_mfu": mfu(plain_flops, plain, kind),
               "sslx_vs_plain": plain / sslx, "step_gflop_per_device": float(f"{sslx_flops / 1e9:.3g}")}
    if on_device:
        figures.update(_on_device_figures(config, global_batch, sslx, on_device, sslx_flops, kind))
    return figures


def recipe_benchmark(path: str, global_batch: int, args: argparse.Namespace) -> dict:
    import jax
    from sslx.config import load_recipe, view_sizes
    try:
        config = load_recipe(path)
    except FileNotFoundError as error:
        sys.exit(f"sslx-benchmark: error: {error} (in --recipes)")
    if "method" not in config or "model" not in config:
        sys.exit(f"sslx-benchmark: error: {path} is not a pretraining recipe (it has no config.method and "
                 f"config.model): --recipes times pretraining steps, e.g. configs/simclr_cifar10.py")
    num_devices = args.devices or jax.device_count()
    config.batch_size = global_batch
    config.model.dtype = args.dtype or config.model.dtype
    batch = synthetic_batch(global_batch, view_sizes(config.augment, config.data.image_size))
    seconds, flops, on_device = sslx_step_seconds(config, batch, num_devices, args.steps, args.on_device_aug)
    kind = jax.devices()[0].device_kind
    figures = {"recipe": path, "method": config.method, "model": config.model.name, "global_batch": global_batch,
               "image_size": config.data.image_size, "devices": num_devices, "dtype": config.model.dtype,
               "device_kind": kind, "sslx_img_per_s": global_batch / seconds, "sslx_mfu": mfu(flops, seconds, kind),
               "step_gflop_per_device": float(f"{flops / 1e9:.3g}")}
    if on_device:
        figures.update(_on_device_figures(config, global_batch, seconds, on_device, flops, kind))
    return figures


def input_benchmark(args: argparse.Namespace) -> list[dict]:
    """Host augmentation, on_device's host side and device augmentation (and the Pillow peer) at 32 px on
    --data-path and at 224 px on --data-path-224 or a temporary set of ImageNet-sized JPEGs."""
    from sslx.config import base_config
    from sslx.data import bench
    results = []
    with tempfile.TemporaryDirectory(prefix="sslx-benchmark-") as scratch:
        for size, path in ((32, args.data_path), (224, args.data_path_224 or None)):
            data_cfg = base_config().data
            data_cfg.name, data_cfg.path = "tfrecord", path or bench.imagenet_like_records(scratch)
            results += bench.all_modes(data_cfg, size, args.input_batch, seconds=args.seconds,
                                       rounds=args.input_rounds)
    return results


def feed_report(inputs: list[dict], steps: list[dict], host_cores: int,
                step_img_per_s: dict[int, float]) -> list[dict]:
    """Per input image size: can a host of `host_cores` feed the step (`step_img_per_s[size]`, else the measured
    step at that size), with host augmentation and with on_device's host side, and which to choose."""
    from sslx.data import bench
    reports = []
    for size in sorted({item["image_size"] for item in inputs}):
        modes = {item["mode"]: item for item in inputs if item["image_size"] == size}
        img_per_s = step_img_per_s.get(size) or next((step["sslx_img_per_s"] for step in steps
                                                       if step.get("image_size") == size), 0.0)
        if not img_per_s or "host augmentation" not in modes:
            continue
        judged = [bench.feed(modes[mode], 2 * img_per_s, host_cores)
                  for mode in ("host augmentation", "host decode only (on_device)")]
        reports.append({"image_size": size, "host_cores": host_cores, "step_img_per_s": round(img_per_s),
                        "host_augmentation": judged[0], "on_device_host_side": judged[1],
                        "choose": bench.choose(*judged)})
    return reports


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} " \
                                  f"--xla_force_host_platform_device_count={args.cpu_devices}"
    results: dict = {"input": [] if args.skip_input else input_benchmark(args), "train_step": [], "feed": []}
    for item in results["input"]:
        print(json.dumps(item), flush=True)
    for spec in filter(None, args.models.split(",")):
        model, _, batch = spec.partition(":")
        if model not in MODELS:
            sys.exit(f"sslx-benchmark: error: unknown model {model!r} in --models; use one of {sorted(MODELS)}")
        figures = step_benchmark(model, int(batch or 128), args)
        results["train_step"].append(figures)
        print(json.dumps(figures), flush=True)
    for spec in filter(None, args.recipes.split(",")):
        path, _, batch = spec.partition(":")
        figures = recipe_benchmark(path, int(batch or 128), args)
        results["train_step"].append(figures)
        print(json.dumps(figures), flush=True)
    host_cores = args.host_cores or len(os.sched_getaffinity(0))
    given = {int(size): float(rate) for size, _, rate in
             (pair.partition(":") for pair in filter(None, args.step_img_per_s.split(",")))}
    results["feed"] = feed_report(results["input"], results["train_step"], host_cores, given)
    for report in results["feed"]:
        print(json.dumps(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
