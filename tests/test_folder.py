"""The `folder` data set (JPEG/PNG files, class subfolders) and sslx-make-tfrecords, on real digit images."""
import json
import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from sslx import data
from sslx.data import augment, make_tfrecords
from sslx.stages import pretrain
from test_pretrain import digits_config

NUM_IMAGES = 200


def write_digits(root: pathlib.Path, *, sizes=(16,), flat=False, count=NUM_IMAGES) -> None:
    """scikit-learn's digits upsampled to each of `sizes` in turn, even ones as JPEG and odd ones as PNG, in a
    folder per class (or all in `root` when flat)."""
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:count], digits.target[:count])):
        grey = np.round(image * 255 / 16).astype(np.uint8)[..., None].repeat(3, -1)
        size = sizes[i % len(sizes)]
        pixels = tf.cast(tf.image.resize(grey, [size, size + i % 3 * (len(sizes) > 1)]), tf.uint8)
        encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels, quality=90)
        directory = root if flat else root / f"digit_{label}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{i:04d}.{'png' if i % 2 else 'jpg'}").write_bytes(encoded.numpy())


def folder_cfg(root, **overrides) -> ml_collections.ConfigDict:
    cfg = {"name": "folder", "path": str(root), "train_split": "train", "eval_split": "test", "eval_fraction": 0.1,
           "split_seed": 0, "shuffle_buffer": 256, "cache": False, **overrides}
    return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_folder")
    write_digits(root)
    return root


def test_class_folders_with_a_held_out_fraction(digit_folder):
    cfg = folder_cfg(digit_folder)
    assert data.describe(cfg, "train") == data.SplitInfo(180, 10, (16, 16, 3))
    assert data.describe(cfg, "test") == data.SplitInfo(20, 10, (16, 16, 3))
    train_labels, train_ids = data.labels_and_ids(cfg, "train")
    test_labels, test_ids = data.labels_and_ids(cfg, "test")
    assert not set(train_ids) & set(test_ids) and len(set(train_ids) | set(test_ids)) == NUM_IMAGES
    assert sorted(np.bincount(test_labels)) == [2] * 10  # the held-out 10% of every class
    # Labels follow the sorted class folders, and the ids name each image's folder.
    assert all(key.startswith(f"digit_{label}/") for key, label in zip(train_ids, train_labels))
    examples = list(data.load_split(cfg, "test").dataset.as_numpy_iterator())
    assert [e["label"] for e in examples] == list(test_labels)
    assert all(e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8 for e in examples)
    # A different seed holds out other images; the same seed the same ones.
    assert set(data.labels_and_ids(folder_cfg(digit_folder, split_seed=1), "test")[1]) != set(test_ids)


def test_split_subfolders_flat_folders_and_labels_txt(tmp_path):
    write_digits(tmp_path / "train", count=60)
    write_digits(tmp_path / "val", count=30)
    cfg = folder_cfg(tmp_path, eval_split="val")
    assert data.describe(cfg, "train").num_examples == 60 and data.describe(cfg, "val").num_examples == 30
    (tmp_path / "labels.txt").write_text("".join(f"digit_{d}\n" for d in reversed(range(10))))
    labels, ids = data.labels_and_ids(folder_cfg(tmp_path, eval_split="val", split_seed=3), "val")
    assert all(key.startswith(f"val/digit_{9 - label}/") for key, label in zip(ids, labels))

    write_digits(tmp_path / "flat", flat=True, count=40)
    flat = folder_cfg(tmp_path / "flat")
    assert data.describe(flat, "train") == data.SplitInfo(36, -1, (16, 16, 3))
    assert set(data.labels_and_ids(flat, "test")[0]) == {-1}


@pytest.mark.parametrize("sizes", [(16,), (16, 20)], ids=["fixed-size", "variable-size"])
def test_every_pipeline_reads_a_folder(tmp_path, sizes):
    write_digits(tmp_path, sizes=sizes, count=64)
    cfg = folder_cfg(tmp_path)
    assert (None in data.describe(cfg, "train").image_shape) == (len(sizes) > 1)
    specs = (augment.cifar_spec(), augment.cifar_spec())
    views = next(data.pretrain_iterator(cfg, specs, local_batch=8, image_size=12, seed=0))
    assert views["views"][0].shape == views["views"][1].shape == (8, 12, 12, 3)
    on_device = next(data.pretrain_iterator(cfg, specs, local_batch=8, image_size=12, seed=0, on_device=True))
    assert on_device["image"].dtype == np.uint8 and on_device["image"].shape[0] == 8
    supervised = next(data.supervised_iterator(cfg, "train", local_batch=8, image_size=12, seed=0))
    assert supervised["image"].shape == (8, 12, 12, 3) and set(supervised["label"]) <= set(range(10))
    evaluation = list(data.eval_iterator(cfg, "test", local_batch=4, image_size=12))
    assert sum(int(b["mask"].sum()) for b in evaluation) == data.describe(cfg, "test").num_examples


@pytest.mark.parametrize("overrides, message", [
    ({"path": "/nonexistent/images"}, "config.data.path='/nonexistent/images' is not a directory"),
    ({"eval_fraction": 1.0}, "config.data.eval_fraction=1.0 must lie in [0, 1)"),
    ({"eval_split": "val"}, "not 'validation'"),
])
def test_bad_folder_settings_name_the_key(digit_folder, overrides, message):
    split = "validation" if overrides.get("eval_split") else "train"
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[").replace(")", r"\)")):
        data.describe(folder_cfg(digit_folder, **overrides), split)


def test_loose_images_beside_class_folders_are_refused(tmp_path):
    write_digits(tmp_path, count=20)
    (tmp_path / "stray.jpg").write_bytes((tmp_path / "digit_0" / "0000.jpg").read_bytes())
    with pytest.raises(ValueError, match="put every image in a class subfolder"):
        data.describe(folder_cfg(tmp_path), "train")


def test_make_tfrecords_round_trip(digit_folder, tmp_path):
    cfg = folder_cfg(digit_folder)
    out = tmp_path / "records"
    make_tfrecords.main([str(digit_folder), str(out), "--examples-per-shard", "64"])
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.txt", "test-00000-of-00001.tfrecord", *(f"train-0000{i}-of-00003.tfrecord" for i in range(3))]
    assert (out / "labels.txt").read_text().split() == [f"digit_{d}" for d in range(10)]
    records = ml_collections.ConfigDict({"name": "tfrecord", "path": str(out), "num_classes": -1})
    with pytest.raises(FileExistsError, match="already holds"):
        make_tfrecords.main([str(digit_folder), str(out)])
    for split in ("train", "test"):
        assert data.describe(records, split) == data.describe(cfg, split)
        labels, ids = data.labels_and_ids(records, split)
        np.testing.assert_array_equal(labels, data.labels_and_ids(cfg, split)[0])
        np.testing.assert_array_equal(ids, data.labels_and_ids(cfg, split)[1])
        converted = list(data.load_split(records, split).dataset.as_numpy_iterator())
        original = list(data.load_split(cfg, split).dataset.as_numpy_iterator())
        for key, a, b in zip(ids, converted, original):
            assert a["label"] == b["label"]
            if key.endswith(".jpg"):  # JPEG bytes are copied: the very same pixels
                np.testing.assert_array_equal(a["image"], b["image"])
            else:  # PNG is re-encoded as JPEG at quality 95: exactly that, decoded
                np.testing.assert_array_equal(a["image"], tf.io.decode_jpeg(tf.io.encode_jpeg(b["image"], quality=95)))


def test_pretraining_on_a_flat_folder_of_variable_size_images_logs_the_probe(tmp_path, monkeypatch):
    write_digits(tmp_path / "images", sizes=(16, 20), flat=True)  # unlabelled: no online probe
    config = digits_config(total_steps=2)
    config.data.name, config.data.path, config.data.image_size = "folder", str(tmp_path / "images"), 12
    # The probe itself is tested on CIFAR-10 (methods_cifar.py); here only where its numbers go.
    probe = {"linear_probe_top1": 0.25, "random_init_linear_probe_top1": 0.125}
    monkeypatch.setattr(pretrain, "evaluate", lambda run, state: probe)
    results = pretrain.run_pretraining(config, str(tmp_path / "run"))
    assert results["step"] == 2 and np.isfinite(results["loss"]) and results["dataset"] == "folder"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["path"] == str(tmp_path / "images")
    # The end-of-run probe is logged at the last step beside the training curves.
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["linear_probe_top1"] == results["linear_probe_top1"]
    tags = {value.tag for events in (tmp_path / "run" / "tb").glob("events*")
            for event in tf.compat.v1.train.summary_iterator(str(events)) for value in event.summary.value}
    assert {"loss", "linear_probe_top1", "random_init_linear_probe_top1"} <= tags
    # Pictures: the views at the start, the curves at the end.
    assert {"plots/augmentation_preview", "plots/curves"} <= tags
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} == {"augmentation_preview.png", "curves.png"}


def test_missing_tfrecords_say_how_to_convert(tmp_path):
    records = ml_collections.ConfigDict({"name": "tfrecord", "path": str(tmp_path), "num_classes": -1})
    with pytest.raises(FileNotFoundError, match="sslx-make-tfrecords IMAGE_DIR OUT_DIR"):
        data.describe(records, "train")
