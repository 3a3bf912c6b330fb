"""sslx-benchmark's recipe figures: a recipe file's own train step, timed over the mesh and written out."""
import json
import pathlib

import pytest

from sslx import benchmark

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"


def test_a_recipe_step_is_timed_and_written(tmp_path):
    out = tmp_path / "bench.json"
    benchmark.main(["--skip-input", "--models", "", "--recipes", f"{QUICKSTART}:16", "--steps", "1",
                    "--json", str(out)])
    (figures,) = json.loads(out.read_text())["train_step"]
    assert (figures["method"], figures["model"], figures["global_batch"], figures["image_size"],
            figures["devices"], figures["dtype"]) == ("simclr", "resnet18", 16, 8, 8, "float32")
    assert figures["sslx_img_per_s"] > 0 and figures["step_gflop_per_device"] > 0
    assert figures["sslx_mfu"] == "n/a"  # CPU: no peak to divide by
    assert "on_device_aug_overhead" not in figures  # only with --on-device-aug


TINY_DINO = """
from sslx.config import load_recipe, use_dino_crops


def get_config():
    c = load_recipe("quickstart")
    c.method = "dino"
    use_dino_crops(c.augment, global_size=8, global_area=(0.4, 1.0), local_count=2, local_size=4,
                   local_area=(0.1, 0.4))
    c.dino.out_dim, c.dino.hidden_dim, c.dino.bottleneck_dim = 32, 16, 8
    c.dino.warmup_teacher_temperature_epochs = 2   # in epochs: the benchmark needs its steps per epoch
    return c
"""


def test_a_multi_crop_recipe_step_is_timed_with_its_on_device_augmentation_overhead(tmp_path):
    recipe = tmp_path / "tiny_dino.py"
    recipe.write_text(TINY_DINO)
    out = tmp_path / "bench.json"
    benchmark.main(["--skip-input", "--models", "", "--recipes", f"{recipe}:8", "--steps", "1", "--on-device-aug",
                    "--json", str(out)])
    (figures,) = json.loads(out.read_text())["train_step"]
    assert figures["method"] == "dino" and figures["sslx_img_per_s"] > 0 and figures["on_device_aug_img_per_s"] > 0
    # The same step fed as augment.on_device feeds it: its 2 + 2 views made on the devices from the shipped
    # uint8 images (the digits' 8 px, as stored).
    assert figures["on_device_aug_input"] == [8, 8]
    assert figures["on_device_aug_overhead"] == pytest.approx(
        figures["sslx_img_per_s"] / figures["on_device_aug_img_per_s"] - 1, abs=1e-3)


def test_on_device_augmentation_is_timed_from_what_the_host_ships():
    config = benchmark._model_config("resnet50", "bfloat16")
    assert benchmark.on_device_input_shape(config) == (256, 256)  # a 256 px square for 224 px views
    config.augment.host_size = 288
    assert benchmark.on_device_input_shape(config) == (288, 288)
    assert benchmark.on_device_input_shape(benchmark._model_config("resnet18_cifar", "float32")) == (32, 32)


def test_a_missing_recipe_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"recipe .*nope\.py not found.*--recipes"):
        benchmark.main(["--skip-input", "--models", "", "--recipes", f"{tmp_path / 'nope.py'}:16"])


def test_a_stage_recipe_is_a_one_line_error():
    linear_eval = QUICKSTART.parent / "linear_eval_cifar10.py"
    with pytest.raises(SystemExit, match=r"linear_eval_cifar10\.py is not a pretraining recipe.*--recipes times"):
        benchmark.main(["--skip-input", "--models", "", "--recipes", f"{linear_eval}:16"])


def test_zero_input_rounds_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--input-rounds", "0"])
    assert "--input-rounds=0: need at least 1 round" in capsys.readouterr().err


def test_step_flops_come_from_xla_and_mfu_from_the_device_kind():
    import jax
    import jax.numpy as jnp
    ones = jnp.ones((64, 128)), jnp.ones((128, 32))
    compiled, flops = benchmark.compile_with_flops(jax.jit(lambda a, b: a @ b), *ones)
    assert flops == 2 * 64 * 128 * 32 and compiled(*ones).shape == (64, 32)
    assert benchmark.mfu(275e12 * 0.5, 1.0, "TPU v4") == 0.5
    assert benchmark.mfu(197e12, 2.0, "TPU v5 lite") == 0.5  # not v5p's peak
    assert benchmark.mfu(1e12, 1.0, "cpu") == "n/a"


def test_feed_names_the_bottleneck_and_the_choice():
    from sslx.data import bench
    inputs = [{"mode": "host augmentation", "image_size": 224, "views_per_cpu_second": 400},
              {"mode": "host decode only (on_device)", "image_size": 224, "views_per_cpu_second": 2000}]
    (fed,) = benchmark.feed_report(inputs, [], host_cores=100, step_img_per_s={224: 10_000})  # 20,000 views/s
    assert fed["host_augmentation"]["bottleneck"] == "device" and fed["choose"].startswith("host augmentation")
    (starved,) = benchmark.feed_report(inputs, [{"image_size": 224, "sslx_img_per_s": 20_000}], 100, {})
    assert starved["host_augmentation"]["bottleneck"] == "host" and starved["choose"] == "augment.on_device=True"
    assert starved["on_device_host_side"]["host_over_step"] == 5.0
    assert bench.feed(inputs[1], 200_000, 100)["bottleneck"] == "host"


def test_pillow_peer_runs_on_imagenet_sized_jpegs(tmp_path):
    pytest.importorskip("PIL")
    import ml_collections
    from sslx.data import bench, sources
    cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": bench.imagenet_like_records(str(tmp_path), 4),
                                     "num_classes": -1})
    assert sources.describe(cfg, "train").image_shape == (None, None, 3)  # the variable-size path, as ImageNet
    peer = bench.pil_views_per_second(cfg, 96, seconds=0.2)
    assert peer["views_per_cpu_second"] > 0 and peer["preset"] == "imagenet"


def test_rounds_time_host_augmentation_and_the_peer_back_to_back_for_a_median_ratio():
    pytest.importorskip("PIL")
    import ml_collections
    from sslx.data import bench
    cfg = ml_collections.ConfigDict({"name": "digits", "num_classes": -1, "shuffle_buffer": 100, "cache": False})
    modes = bench.all_modes(cfg, 16, 8, seconds=0.2, rounds=3)
    assert [mode["mode"] for mode in modes] == ["host augmentation", "host decode only (on_device)",
                                                "device augmentation", "Pillow per-image peer (1 thread)"]
    peer = modes[-1]
    assert len(peer["rounds"]) == 3 and peer["rounds"][0]["sslx_host"] == modes[0]["views_per_cpu_second"]
    assert peer["sslx_host_over_peer"] == pytest.approx(
        sorted(r["sslx_host"] / r["peer"] for r in peer["rounds"])[1], abs=0.01)


def test_stage_costs_time_each_host_augmentation_stage_of_jpegs_and_fixed_size_images(tmp_path):
    import ml_collections
    from sslx.data import bench
    cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": bench.imagenet_like_records(str(tmp_path), 4),
                                     "num_classes": -1})
    costs = bench.stage_costs(cfg, 96, 4, batches=1)
    assert list(costs["cpu_ms_per_view"]) == ["decode_crop", "pieces", "crop", "colour", "blur"]  # imagenet blurs
    # Absolute times; the later stages' are differences of timings, too noisy at this size to bound.
    assert costs["cpu_ms_per_view"]["decode_crop"] > 0 and costs["cpu_ms_per_view"]["pieces"] > 0
    assert costs["total_cpu_ms_per_view"] == pytest.approx(sum(costs["cpu_ms_per_view"].values()), abs=2e-3)
    fixed = bench.stage_costs(ml_collections.ConfigDict({"name": "digits", "num_classes": -1}), 32, 4, batches=1,
                              preset="imagenet")  # 8 px digits enlarged: the batched crop resizes, 32 px blurs
    assert list(fixed["cpu_ms_per_view"]) == ["decode", "pieces", "crop", "colour", "blur"]
