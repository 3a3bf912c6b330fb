"""Batched SimCLR augmentation: ranges, determinism, sampled boxes and op frequencies, eager vs tf.data."""
import dataclasses

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sslx.data import augment

BYOL_VIEW2 = augment.AugmentSpec(blur_prob=0.1, solarize_prob=0.2)


def _images(batch=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("spec", [augment.cifar_spec(), augment.imagenet_spec(), BYOL_VIEW2])
def test_shape_dtype_and_range(spec):
    views = augment.augment_batch(_images(), spec, 7, out_size=24).numpy()
    assert views.shape == (16, 24, 24, 3) and views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_seeds_decide_the_views():
    images, spec = _images(), augment.imagenet_spec()
    first = augment.augment_batch(images, spec, 1, 32).numpy()
    np.testing.assert_array_equal(first, augment.augment_batch(images, spec, 1, 32).numpy())
    assert not np.allclose(first, augment.augment_batch(images, spec, 2, 32).numpy())
    view1, view2 = augment.two_views(images, (spec, spec), 1, 32)
    assert not np.allclose(view1.numpy(), view2.numpy())


def test_eager_and_tf_data_agree():
    images, specs = _images(), (augment.cifar_spec(), BYOL_VIEW2)
    eager = augment.two_views(images, specs, [3, 4], 32)
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: augment.two_views(x, specs, [3, 4], 32))
    for expected, got in zip(eager, next(iter(dataset))):
        np.testing.assert_allclose(expected.numpy(), got.numpy(), atol=1e-6)


def test_identity_spec_returns_the_image():
    images = tf.cast(_images(), tf.float32) / 255.0
    np.testing.assert_allclose(augment.augment_batch(images, augment.identity_spec(), 0, 32).numpy(),
                               images.numpy(), atol=1e-5)


@pytest.mark.parametrize("area", [(0.08, 1.0), (0.2, 0.5)])
def test_crop_boxes_fit_and_honour_the_area_range(area):
    spec = dataclasses.replace(augment.imagenet_spec(), crop_area_min=area[0], crop_area_max=area[1])
    top, left, height, width = augment.sample_params(spec, 0, 4096, 32, 48)["boxes"].numpy().T
    fraction = height * width / (32 * 48)
    assert fraction.min() >= area[0] - 1e-6 and fraction.max() <= area[1] + 1e-6
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 48).all()
    assert fraction.max() - fraction.min() > 0.5 * (area[1] - area[0])  # spread over the range, not stuck


def test_op_frequencies_match_their_probabilities():
    spec = augment.AugmentSpec(flip_prob=0.5, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.1,
                               solarize_prob=0.3)
    params = augment.sample_params(spec, 5, 20_000, 32, 32)
    for name, prob in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.1), ("solarize", 0.3)]:
        assert abs(params[name].numpy().mean() - prob) < 0.015, name
    jittered = params["jitter"].numpy()
    assert (params["factors"].numpy()[~jittered] == 1.0).all() and (params["hue"].numpy()[~jittered] == 0).all()
    np.testing.assert_array_equal(np.sort(params["order"].numpy(), axis=1), np.tile(np.arange(4), (20_000, 1)))
    assert len({tuple(row) for row in params["order"].numpy()}) == 24  # every order of the 4 jitter ops occurs


def test_hue_shift_matches_tf_adjust_hue():
    images = tf.random.stateless_uniform([4, 8, 8, 3], [1, 2])
    delta = tf.constant([-0.3, -0.05, 0.1, 0.45])
    expected = [tf.image.adjust_hue(image, d) for image, d in zip(images, delta)]
    np.testing.assert_allclose(augment._shift_hue(images, delta).numpy(), np.stack(expected), atol=1e-4)


def test_grayscale_only_gives_equal_channels():
    spec = dataclasses.replace(augment.identity_spec(), grayscale_prob=1.0)
    views = augment.augment_batch(_images(), spec, 0, 32).numpy()
    np.testing.assert_allclose(views[..., 0], views[..., 2], atol=1e-6)


def test_jitter_matches_sequential_ops_when_nothing_clips():
    spec = augment.AugmentSpec(jitter_prob=1.0, hue=0.0, grayscale_prob=0.0)
    images = 0.4 + 0.2 * tf.random.stateless_uniform([64, 8, 8, 3], [0, 1])  # stays inside [0, 1]
    params = augment.sample_params(spec, 3, 64, 8, 8)
    got = augment._color(images, params, spec).numpy()
    grey_weights = np.array(augment.GREY_WEIGHTS)
    for x, factors, order, y in zip(images.numpy(), params["factors"].numpy(), params["order"].numpy(), got):
        for op in np.argsort(order[:3]):  # brightness, contrast, saturation in this example's order
            f = factors[op]
            if op == 0:
                x = f * x
            elif op == 1:
                x = f * x + (1 - f) * x.mean(axis=(0, 1))
            else:
                x = f * x + (1 - f) * (x @ grey_weights)[..., None]
        np.testing.assert_allclose(y, np.clip(x, 0, 1), atol=1e-5)


def test_eval_preprocess_centre_crops_images_and_batches():
    image = tf.cast(tf.reshape(tf.range(40 * 60 * 3) % 256, [40, 60, 3]), tf.uint8)
    assert augment.eval_preprocess(image, 16).shape == (16, 16, 3)
    assert augment.eval_preprocess(tf.stack([image, image]), 16).shape == (2, 16, 16, 3)
    small = tf.cast(_images(2), tf.float32) / 255.0
    np.testing.assert_allclose(augment.eval_preprocess(small, 32, crop_fraction=1.0).numpy(), small.numpy(),
                               atol=1e-6)


def test_spec_from_config_presets_views_and_errors():
    cfg = ml_collections.ConfigDict({"preset": "imagenet", "view1": {"blur_prob": 1.0},
                                     "view2": {"blur_prob": 0.1, "solarize_prob": 0.2}})
    view1, view2 = augment.spec_from_config(cfg)
    assert (view1.blur_prob, view1.solarize_prob, view2.blur_prob, view2.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    cifar, _ = augment.spec_from_config(ml_collections.ConfigDict({"preset": "cifar", "jitter_strength": 0.25}))
    assert cifar.blur_prob == 0.0 and cifar.jitter_strengths()["hue"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"config\.augment\.blurr_prob"):
        augment.spec_from_config(ml_collections.ConfigDict({"preset": "cifar", "blurr_prob": 0.1}))
    with pytest.raises(ValueError, match=r"config\.augment\.view2\.hues"):
        augment.spec_from_config({"preset": "cifar", "view2": {"hues": 0.1}})
    with pytest.raises(ValueError, match=r"config\.augment\.preset"):
        augment.spec_from_config({"preset": "simclr"})
