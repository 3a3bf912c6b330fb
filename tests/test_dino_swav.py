"""DINO and SwAV as methods: a full multi-crop step on 1 device equals 8 (loss, params, teacher, center, queue),
what is frozen when, and both pretraining from the CLI with a ViT and a ResNet."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import parallel
from sslx.config import base_config, crop, eval_config
from sslx.methods import build_method
from sslx.stages import knn
from sslx.train import create_train_state, make_train_step

REPO = pathlib.Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 16
SIZES = (8, 8, 4, 4)   # two global crops, two local ones
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY_VIT = {"depth": 1, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "patch_size": 2, "image_size": 8}


def tiny_config(method, encoder="vit"):
    c = base_config()
    c.method, c.batch_size = method, GLOBAL_BATCH
    c.augment.crops = (crop(2, 8, (0.4, 1.0)), crop(2, 4, (0.05, 0.4)))
    if encoder == "vit":
        c.model.name = "vit_ti4"
        c.model.vit.update(TINY_VIT)
    else:
        c.model.width = 0.0625
    c.dino.update({"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "norm_last_layer": False,
                   "warmup_teacher_temperature_epochs": 2, "teacher_temperature": 0.07})
    c.swav.update({"num_prototypes": 12, "queue_length": 2 * GLOBAL_BATCH, "queue_start_epoch": 1.0})
    c.head.hidden_dim, c.head.out_dim = 16, 8
    # No BN in SwAV's projection here: on these random images the tiny ViT's features barely vary across examples,
    # and BN's one-pass variance E[x^2] - E[x]^2 then differs between 1 and 8 devices far beyond float rounding
    # (5e-4 in the loss after one step); the CLI tests run it with BN.
    c.head.use_bn = False
    return c


def batch(seed):
    rng = np.random.default_rng(seed)
    return {"views": tuple(rng.uniform(size=(GLOBAL_BATCH, s, s, 3)).astype(np.float32) for s in SIZES),
            "label": rng.integers(0, 10, size=(GLOBAL_BATCH,)).astype(np.int32)}


def stepper(method, num_devices):
    """(host state, batch) -> (host state, metrics): one step of the method with its own optimizer (its freezes
    included) at a constant rate of 0.1 over `num_devices`; and the initial host state."""
    schedule = optax.constant_schedule(0.1)
    optimizer = method.optimizer(schedule)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    initial = jax.jit(create_train_state, static_argnums=(0, 1), compiler_options=FAST_COMPILE)(
        method, optimizer, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
    step = make_train_step(method, optimizer, schedule, mesh).lower(
        parallel.replicate(initial, mesh), parallel.shard_batch(batch(0), mesh), jax.random.key(1)).compile(
        FAST_COMPILE)
    # np.array copies: on CPU device_get may alias a buffer that the next (donating) step overwrites.
    host = lambda tree: jax.tree.map(np.array, jax.device_get(tree))  # noqa: E731

    def run(state, data):
        # A copy in: on CPU device_put may alias the host array, which the donating step would then overwrite.
        state = parallel.replicate(jax.tree.map(np.copy, state), mesh)
        state, metrics = step(state, parallel.shard_batch(data, mesh), jax.random.key(1))
        return host(state), jax.device_get(metrics)

    return run, host(initial)


def assert_same_step(before, one, eight, what):
    """The changes a step made on 1 and on 8 devices agree, relative to the largest change (the gradients of a few
    near-zero parameters are float noise of the size of that tolerance); none on either (SwAV's queue before its
    epoch)."""
    moved = [jax.tree.map(np.subtract, after, before) for after in (one, eight)]
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(moved[0]))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(moved[0]), jax.tree.leaves(moved[1])):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module", params=["dino", "swav"])
def runs(request):
    """Four steps at one step per epoch (the frozen layer's epoch, the queue's two filling epochs, its first use) on
    one device, and each of those steps again on 8 devices from the same state."""
    method = build_method(tiny_config(request.param), num_classes=10, total_steps=10, steps_per_epoch=1)
    one, state = stepper(method, 1)
    eight, _ = stepper(method, 8)
    states, metrics, on_eight = [state], [], []
    for k in range(4):
        on_eight.append(eight(states[-1], batch(k)))
        state, step_metrics = one(states[-1], batch(k))
        states.append(state)
        metrics.append(step_metrics)
    return request.param, (states, metrics), on_eight


def test_a_multi_crop_step_on_one_device_equals_eight(runs):
    _, (states, metrics), on_eight = runs
    for k, (m1, (s8, m8)) in enumerate(zip(metrics, on_eight)):
        assert np.isfinite(m1["loss"])
        np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6, err_msg=f"step {k}")
        assert_same_step(states[k].params, states[k + 1].params, s8.params, f"step {k} params")
        assert_same_step(states[k].extra, states[k + 1].extra, s8.extra, f"step {k} extra")


def test_the_last_layer_or_prototypes_stay_frozen_in_the_first_epoch(runs):
    method, (states, _), _ = runs
    part = "last_layer" if method == "dino" else "prototypes"
    for leaf0, leaf1, leaf2 in zip(*(jax.tree.leaves(s.params["head"][part]) for s in states[:3])):
        np.testing.assert_allclose(leaf1, leaf0, rtol=1e-6, atol=1e-7)   # SwAV's renormalisation rounds
        assert not np.allclose(leaf2, leaf1)
    # Everything else moved in the first step.
    assert not np.allclose(states[1].params["encoder"]["cls_token"], states[0].params["encoder"]["cls_token"])


def test_dino_center_teacher_temperature_and_teacher(runs):
    method, (states, metrics), _ = runs
    if method != "dino":
        pytest.skip("DINO's state")
    # The teacher temperature rises per epoch over the 2 warm-up epochs, 0.04 then 0.07.
    assert [round(float(m["teacher_temperature"]), 4) for m in metrics] == [0.04, 0.07, 0.07, 0.07]
    assert np.linalg.norm(states[1].extra["center"]) > 0 and not np.allclose(states[2].extra["center"],
                                                                             states[1].extra["center"])
    # The teacher starts as the student and follows it by EMA (it is not the student after a step).
    teacher, student = (lambda s: s.extra["target_params"]["encoder"]["cls_token"]), (
        lambda s: s.params["encoder"]["cls_token"])
    np.testing.assert_array_equal(teacher(states[0]), student(states[0]))
    tau = float(metrics[0]["momentum"])
    np.testing.assert_allclose(teacher(states[1]), tau * teacher(states[0]) + (1 - tau) * student(states[1]),
                               rtol=1e-6, atol=1e-7)
    assert not np.allclose(teacher(states[1]), student(states[1]))


def test_swav_prototypes_stay_normalised_and_the_queue_fills_from_its_epoch(runs):
    method, (states, metrics), _ = runs
    if method != "swav":
        pytest.skip("SwAV's state")
    for state in states:
        np.testing.assert_allclose(np.linalg.norm(state.params["head"]["prototypes"]["kernel"], axis=0), 1.0,
                                   rtol=1e-5)
    queue = [s.extra["queue"] for s in states]   # [crops assigned, queue length, dim]
    assert not queue[1].any()                    # epoch 0: before queue_start_epoch
    assert queue[2][:, :GLOBAL_BATCH].any() and not queue[2][:, GLOBAL_BATCH:].any()
    assert np.abs(queue[3]).sum(axis=-1).min() > 0              # full after two epochs of one batch each
    assert [float(m["queue_used"]) for m in metrics] == [0.0, 0.0, 0.0, 1.0]


def pretrain_cli(workdir, recipe, *overrides):
    """sslx-pretrain as a user runs it on 8 simulated devices: digits (8 px), 2 steps."""
    args = ["--config", recipe, "--workdir", str(workdir), "--config.data.name=digits", "--config.data.image_size=8",
            "--config.data.cache=False", "--config.data.shuffle_buffer=256", "--config.batch_size=32",
            "--config.total_steps=2", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
            "--config.eval.probe_steps=20", "--config.eval.pixel_probe_size=0", *overrides]
    code = "import sys; sys.argv[0] = 'sslx-pretrain'; from sslx.cli import pretrain; pretrain()"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


VIT = ["--config.model.name=vit_ti4", *[f"--config.model.vit.{k}={v}" for k, v in TINY_VIT.items()]]
RESNET = ["--config.model.name=resnet18", "--config.model.width=0.125"]
# The recipes' crops at digits' scale (global 8 px, local 4 px), overridden entry by entry; tiny heads.
DINO = ["--config.augment.crops[0].size=8", "--config.augment.crops[1].size=8", "--config.augment.crops[2].size=4",
        "--config.dino.out_dim=64", "--config.dino.hidden_dim=32", "--config.dino.bottleneck_dim=16"]
# dino_imagenet's ViT-S settings besides the model: stochastic depth, AdamW to 1e-6, weight decay 0.04 -> 0.4, each
# gradient tensor clipped to norm 3.
DINO_VIT_S = ["--config.model.vit.drop_path_rate=0.1", "--config.optim.name=adamw", "--config.optim.base_lr=0.0005",
              "--config.optim.end_lr=1e-6", "--config.optim.weight_decay=0.04", "--config.optim.weight_decay_end=0.4",
              "--config.optim.grad_clip_per_tensor=3.0"]
SWAV = ["--config.augment.crops[0].size=8", "--config.augment.crops[1].size=4", "--config.swav.num_prototypes=20",
        "--config.head.hidden_dim=32"]


@pytest.mark.parametrize("recipe,encoder,overrides", [
    ("dino_cifar10", "vit_ti4", [*VIT, *DINO, *DINO_VIT_S]),
    ("dino_cifar10", "resnet18", [*RESNET, *DINO, "--config.eval.linear_probe=False"]),
    ("swav_cifar10", "vit_ti4", [*VIT, *SWAV, "--config.swav.queue_length=0", "--config.eval.linear_probe=False"]),
    ("swav_cifar10", "resnet18", [*RESNET, *SWAV, "--config.swav.queue_length=64",
                                  "--config.swav.queue_start_epoch=0"]),
])
def test_dino_and_swav_pretrain_from_the_cli(tmp_path, recipe, encoder, overrides):
    results = pretrain_cli(tmp_path / "pretrain", recipe, *overrides)
    assert results["method"] == recipe.split("_")[0] and results["model"] == encoder and results["step"] == 2
    assert np.isfinite(results["loss"])
    if "linear_probe_top1" in results:
        assert 0.0 <= results["linear_probe_top1"] <= 1.0
    # The evaluation stages read the encoder of a workdir whose head is the method's own.
    config = eval_config()
    config.pretrained, config.eval_batch_size, config.embedding_map_points = str(tmp_path / "pretrain"), 304, 0
    assert 0.0 < knn.run_knn(config, str(tmp_path / "knn"))["top1"] <= 1.0
