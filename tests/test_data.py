"""Sources by name, per-process shards, and the pretraining / evaluation / supervised iterators."""
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sslx import data
from sslx.data import sources

DIGITS = ml_collections.ConfigDict({"name": "digits", "shuffle_buffer": 500, "cache": False})


def _tfrecord_cfg(path):
    return ml_collections.ConfigDict({"name": "tfrecord", "path": str(path), "num_classes": -1,
                                      "shuffle_buffer": 1000, "cache": False})


def test_digits_source():
    assert data.describe(DIGITS, "train") == data.SplitInfo(1500, 10, (8, 8, 3))
    source = data.load_split(DIGITS, "test")
    examples = list(source.dataset.as_numpy_iterator())
    assert source.num_examples == len(examples) == 297 and source.num_classes == 10
    images = np.stack([e["image"] for e in examples])
    labels = np.array([e["label"] for e in examples])
    assert images.dtype == np.uint8 and images.shape == (297, 8, 8, 3) and images.max() == 255
    assert labels.dtype == np.int32 and set(labels) == set(range(10))


def test_tfrecord_source(cifar10_dir):
    cfg = _tfrecord_cfg(cifar10_dir)
    source = data.load_split(cfg, "test")
    assert (source.num_examples, source.num_classes, source.image_shape) == (10_000, 10, (32, 32, 3))
    for example in source.dataset.take(20).as_numpy_iterator():
        assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
        assert 0 <= example["label"] <= 9


@pytest.mark.parametrize("split, per_file", [("test", False), ("train", True)])
def test_process_shards_are_disjoint_and_cover_the_split(cifar10_dir, split, per_file):
    cfg = _tfrecord_cfg(cifar10_dir)
    def record_hashes(index):
        records = data.load_split(cfg, split, process_index=index, process_count=2).records.batch(4096)
        return set(np.concatenate(list(records.map(lambda r: tf.strings.to_hash_bucket_fast(r, 2**62))
                                       .as_numpy_iterator())))

    shards = [record_hashes(i) for i in range(2)]
    assert not shards[0] & shards[1]
    assert len(shards[0]) + len(shards[1]) == data.describe(cfg, split).num_examples
    if not per_file:  # record sharding: sizes differ by at most one
        assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_digits_shards_cover_the_split():
    labels = [[e["label"] for e in data.load_split(DIGITS, "test", process_index=i, process_count=2)
               .dataset.as_numpy_iterator()] for i in range(2)]
    everything = [e["label"] for e in data.load_split(DIGITS, "test").dataset.as_numpy_iterator()]
    assert sorted(labels[0] + labels[1]) == sorted(everything) and len(labels[0]) == 149


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_iterator_pads_the_last_batch(process_count):
    total_real, batches_per_process = 0, set()
    for index in range(process_count):
        batches = list(data.eval_iterator(DIGITS, "test", local_batch=64, image_size=16, process_index=index,
                                          process_count=process_count))
        batches_per_process.add(len(batches))
        for batch in batches:
            assert batch["image"].shape == (64, 16, 16, 3) and batch["mask"].shape == (64,)
            real = batch["mask"] == 1.0
            assert (np.sort(real)[::-1] == real).all()  # real rows first, then padding
            assert (batch["label"][~real] == -1).all() and (batch["image"][~real] == 0).all()
            assert (batch["label"][real] >= 0).all()
        total_real += sum(int(batch["mask"].sum()) for batch in batches)
    assert total_real == 297 and len(batches_per_process) == 1  # every process steps the same number of times


def test_eval_iterator_max_examples():
    batches = list(data.eval_iterator(DIGITS, "train", local_batch=32, image_size=8, max_examples=100))
    assert len(batches) == 4 and sum(b["mask"].sum() for b in batches) == 100


def test_pretrain_iterator_shapes_and_determinism():
    specs = data.spec_from_config({"preset": "cifar"})
    first = [next(data.pretrain_iterator(DIGITS, specs, local_batch=16, image_size=32, seed=3)) for _ in range(2)]
    batch = first[0]
    view1, view2 = batch["views"]
    assert view1.shape == view2.shape == (16, 32, 32, 3) and batch["label"].shape == (16,)
    assert view1.dtype == np.float32 and 0 <= view1.min() and view1.max() <= 1
    for key in batch:
        np.testing.assert_array_equal(first[0][key], first[1][key])
    other = next(data.pretrain_iterator(DIGITS, specs, local_batch=16, image_size=32, seed=4))
    assert not np.array_equal(other["views"][0], view1)


@pytest.mark.parametrize("cache", [False, True])
def test_pretrain_iterator_on_tfrecords(cifar10_dir, cache):
    cfg = _tfrecord_cfg(cifar10_dir)
    cfg.cache = cache
    cfg.train_split = "test"  # the smaller split keeps the cache quick to fill
    batch = next(data.pretrain_iterator(cfg, data.spec_from_config({"preset": "cifar"}), local_batch=32,
                                        image_size=32, seed=0))
    assert batch["views"][0].shape == (32, 32, 32, 3) and set(batch["label"]) <= set(range(10))


@pytest.mark.parametrize("cache", [False, True])
def test_variable_size_images_are_cropped_per_image(tmp_path, cache):
    """ImageNet-like data (sizes vary): views decoded from the crops' window (or from cached pixels), the same
    batches from the same seed, and supervised crops of the same size; a corrupt record is skipped."""
    sizes = [(40, 60), (50, 30), (24, 24), (70, 45)] * 4
    records = [tf.io.encode_jpeg(np.random.default_rng(i).integers(0, 256, (h, w, 3), np.uint8)).numpy()
               for i, (h, w) in enumerate(sizes)]
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001.tfrecord")) as writer:
        for i, jpeg in enumerate(records[:8] + [b"not a jpeg"] + records[8:]):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))})).SerializeToString())
    cfg = _tfrecord_cfg(tmp_path)
    cfg.cache, cfg.shuffle_buffer = cache, 16
    specs = data.spec_from_config({"preset": "imagenet"})
    batches = [next(data.pretrain_iterator(cfg, specs, local_batch=8, image_size=28, seed=1)) for _ in range(2)]
    batch = batches[0]
    view1, view2 = batch["views"]
    assert view1.shape == view2.shape == (8, 28, 28, 3)
    assert 0 <= view1.min() and view1.max() <= 1 and not np.allclose(view1, view2)
    for key in batch:
        np.testing.assert_array_equal(batches[0][key], batches[1][key])
    stream = data.supervised_iterator(cfg, "train", local_batch=16, image_size=20, seed=0)
    assert next(stream)["image"].shape == (16, 20, 20, 3) and stream.skipped == 1


def test_supervised_iterator_keeps_to_the_subset():
    indices = [0, 5, 10, 15]
    wanted = {int(e["label"]) for i, e in enumerate(data.load_split(DIGITS, "train").dataset.as_numpy_iterator())
              if i in indices}
    batch = next(data.supervised_iterator(DIGITS, "train", local_batch=16, image_size=16, seed=0,
                                          indices=indices))
    assert batch["image"].shape == (16, 16, 16, 3) and set(batch["label"]) <= wanted


@pytest.mark.parametrize("crop_area_min", [1.0, 0.08])
def test_crop_flip_spec_sets_the_smallest_crop(crop_area_min):
    """16 views of one image: at area 1 each is the whole image or its mirror; at 0.08 they are zoomed crops."""
    views = next(data.supervised_iterator(DIGITS, "train", local_batch=16, image_size=16, seed=0, indices=[3],
                                          spec=data.crop_flip_spec(crop_area_min)))["image"]
    whole = [np.allclose(view, views[0], atol=1e-5) or np.allclose(view, views[0][:, ::-1], atol=1e-5)
             for view in views]
    assert all(whole) == (crop_area_min == 1.0), whole


def test_unknown_name_and_missing_path_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config\.data\.name='nosuchdata'.*digits") as error:
        data.describe(ml_collections.ConfigDict({"name": "nosuchdata", "data_dir": str(tmp_path)}), "train")
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path") as error:
        data.load_split(_tfrecord_cfg(tmp_path / "absent"), "train")
    assert str(tmp_path / "absent") in str(error.value) and "\n" not in str(error.value)


def test_unprepared_tfds_data_is_never_downloaded(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"'cifar10' is not prepared") as error:
        data.load_split(ml_collections.ConfigDict({"name": "cifar10", "data_dir": str(tmp_path)}), "train")
    message = str(error.value)
    assert str(tmp_path) in message and "tfds build cifar10" in message and "\n" not in message
    assert time.perf_counter() - start < 10
    assert not any(tmp_path.iterdir())  # nothing fetched or written


def test_digits_split_names_are_checked():
    with pytest.raises(ValueError, match="config.data"):
        sources.describe(DIGITS, "validation")
