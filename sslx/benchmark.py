"""`sslx-benchmark`: input-pipeline views/s and train-step img/s next to a plain Flax step, in one run.

    sslx-benchmark --data-path ../shared/data/cifar10            # input pipeline + both models
    sslx-benchmark --skip-input --models resnet18_cifar:128       # one train-step figure
    sslx-benchmark --skip-input --models '' --recipes configs/byol_cifar10.py:512,configs/mocov2_cifar10.py:512

The plain step is what a Flax user writes by hand for the same model and loss on one device: encoder +
head, NT-Xent, LARS, `jax.jit(value_and_grad)`. The sslx step is `sslx.train.make_train_step` (shard_map
over the mesh, online probe, metrics). Both get the same device-resident synthetic batch, so the ratio is
the framework's overhead, not the input pipeline's. `--recipes` times the sslx step of any recipe file (its
method, heads, optimizer, model and image size) the same way, to compare methods.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODELS = {  # name -> (encoder, cifar stem, image size)
    "resnet18_cifar": ("resnet18", True, 32),
    "resnet50": ("resnet50", False, 224),
}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sslx-benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", default="../shared/data/cifar10",
                        help="directory of {split}-*.tfrecord JPEG files for the input benchmark")
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
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per input-pipeline measurement")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def _model_config(model: str, dtype: str):
    from sslx.config import base_config
    encoder, cifar_stem, size = MODELS[model]
    config = base_config()
    config.model.name, config.model.cifar_stem, config.model.dtype = encoder, cifar_stem, dtype
    config.data.image_size = size
    config.loss.temperature = 0.1
    return config


def _time_steps(step, state, batch, steps: int) -> float:
    """Seconds per step after two warm-up (compile) steps; blocks on the state to include all work."""
    import jax
    for _ in range(2):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps


def plain_flax_step_seconds(config, batch: dict, steps: int) -> float:
    """A hand-written single-device Flax step for the same encoder + head + NT-Xent + LARS."""
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

    images = jnp.concatenate([batch["view1"], batch["view2"]])
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
    n = batch["view1"].shape[0]

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

    return _time_steps(step, state, images, steps)


def sslx_step_seconds(config, batch: dict, num_devices: int, steps: int) -> float:
    import jax
    import jax.numpy as jnp
    from sslx import optim, parallel
    from sslx.methods import build_method
    from sslx.train import create_train_state, make_train_step

    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    schedule = optim.warmup_cosine(0.1, 10, 1000)
    optimizer = optim.make_optimizer(config.optim, schedule)
    method = build_method(config, num_classes=10, total_steps=1000)
    size = config.data.image_size
    state = create_train_state(method, optimizer, jax.random.key(0), jnp.zeros((2, size, size, 3)))
    train_step = make_train_step(method, optimizer, schedule, mesh)
    rng = jax.random.key(1)
    return _time_steps(lambda s, b: train_step(s, b, rng), parallel.replicate(state, mesh),
                       parallel.shard_batch(batch, mesh), steps)


def synthetic_batch(global_batch: int, size: int) -> dict:
    import numpy as np
    rng = np.random.default_rng(0)
    return {"view1": rng.uniform(size=(global_batch, size, size, 3)).astype(np.float32),
            "view2": rng.uniform(size=(global_batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, 10, size=(global_batch,)).astype(np.int32)}


def step_benchmark(model: str, global_batch: int, args: argparse.Namespace) -> dict:
    import jax
    num_devices = args.devices or jax.device_count()
    dtype = args.dtype or "float32"
    config = _model_config(model, dtype)
    batch = synthetic_batch(global_batch, config.data.image_size)
    plain = plain_flax_step_seconds(config, batch, args.steps)
    sslx = sslx_step_seconds(config, batch, num_devices, args.steps)
    return {"model": model, "global_batch": global_batch, "devices": num_devices, "dtype": dtype,
            "device_kind": jax.devices()[0].device_kind,
            "sslx_img_per_s": global_batch / sslx, "plain_flax_img_per_s": global_batch / plain,
            "sslx_vs_plain": plain / sslx}


def recipe_benchmark(path: str, global_batch: int, args: argparse.Namespace) -> dict:
    import jax
    from sslx.config import load_recipe
    try:
        config = load_recipe(path)
    except FileNotFoundError as error:
        sys.exit(f"sslx-benchmark: error: {error} (in --recipes)")
    num_devices = args.devices or jax.device_count()
    config.batch_size = global_batch
    config.model.dtype = args.dtype or config.model.dtype
    batch = synthetic_batch(global_batch, config.data.image_size)
    seconds = sslx_step_seconds(config, batch, num_devices, args.steps)
    return {"recipe": path, "method": config.method, "model": config.model.name, "global_batch": global_batch,
            "image_size": config.data.image_size, "devices": num_devices, "dtype": config.model.dtype,
            "device_kind": jax.devices()[0].device_kind, "sslx_img_per_s": global_batch / seconds}


def input_benchmark(args: argparse.Namespace) -> list[dict]:
    from sslx.config import base_config
    from sslx.data.bench import all_modes
    data_cfg = base_config().data
    data_cfg.name, data_cfg.path = "tfrecord", args.data_path
    # Host augmentation, then config.augment.on_device: host decode only, and the JAX augmentation on its own.
    return [result for size in (32, 224) for result in all_modes(data_cfg, size, args.input_batch,
                                                                  seconds=args.seconds)]


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} " \
                                  f"--xla_force_host_platform_device_count={args.cpu_devices}"
    results: dict = {"input": [] if args.skip_input else input_benchmark(args), "train_step": []}
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
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
