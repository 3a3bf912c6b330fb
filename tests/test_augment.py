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
    view1, view2 = augment.augment_views(images, (spec, spec), 1, (32, 32))
    assert not np.allclose(view1.numpy(), view2.numpy())


def test_eager_and_tf_data_agree():
    images, specs = _images(), (augment.cifar_spec(), BYOL_VIEW2)
    eager = augment.augment_views(images, specs, [3, 4], (32, 32))
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: augment.augment_views(x, specs, [3, 4], (32, 32)))
    for expected, got in zip(eager, next(iter(dataset))):
        np.testing.assert_allclose(expected.numpy(), got.numpy(), atol=1e-6)


def test_pieces_in_blur_order_give_the_views_of_one_piece(monkeypatch):
    """A batch augmented piece by piece, blurred views first (in_pieces), equals the batch in one piece."""
    images, spec = _images(24, 20), BYOL_VIEW2  # blur_prob 0.1: most pieces hold no blurred view
    params = augment.sample_params(spec, 5, 24, 20, 20)
    assert 0 < params["blur"].numpy().sum() < 24
    whole = augment.apply_params(images, spec, params, 40).numpy()
    monkeypatch.setattr(augment, "PIECE_BYTES", 5 * 40 * 40 * 3 * 4)  # pieces of 5 views, the last of 4
    assert augment.piece_size(40) == 5
    np.testing.assert_allclose(augment.apply_params(images, spec, params, 40).numpy(), whole, atol=1e-6)


def test_pieces_group_views_by_the_colour_steps_they_skip_and_give_the_same_views(monkeypatch):
    """Views that skip a colour step (no jitter or grayscale, hue rotation first, or last without grayscale) are
    grouped, blurred or not, so that whole pieces skip the step; the batch still equals the batch in one piece."""
    spec = augment.imagenet_spec()
    images, params = _images(64, 20), augment.sample_params(spec, 3, 64, 20, 20)
    order = augment.piece_order(augment.batch_stages(spec, 40), params).numpy()
    assert sorted(order) == list(range(64)) and (np.diff(params["blur"].numpy()[order].astype(int)) <= 0).all()
    monkeypatch.setattr(augment, "PIECE_BYTES", 4 * 40 * 40 * 3 * 4)
    for step, most_runs in zip(augment._colour_steps(params)[1:], (1, 1, 3)):  # before hue, hue, after hue
        skips = ~step.numpy()[order]
        assert np.count_nonzero(np.diff(skips.astype(int)) == 1) + skips[0] <= most_runs
        assert any(skips[i:i + 4].all() for i in range(0, 64, 4))  # a piece that skips the step
    pieces = augment.apply_params(images, spec, params, 40).numpy()
    monkeypatch.setattr(augment, "PIECE_BYTES", 1 << 30)
    np.testing.assert_allclose(pieces, augment.apply_params(images, spec, params, 40).numpy(), atol=1e-6)


@pytest.mark.parametrize("out_size", [40, 12])
def test_small_images_resized_by_products_match_the_gathers(monkeypatch, out_size):
    images, spec = _images(8, 16), augment.imagenet_spec()
    params = augment.sample_params(spec, 2, 8, 16, 16)
    products = augment._crop_and_flip(images, params["boxes"], params["flip"], out_size).numpy()
    monkeypatch.setattr(augment, "MATMUL_RESIZE_MAX_SIDE", 0)
    gathers = augment._crop_and_flip(images, params["boxes"], params["flip"], out_size).numpy()
    assert products.shape == gathers.shape == (8, out_size, out_size * 3)
    np.testing.assert_allclose(products, gathers, atol=1e-6)
    assert params["flip"].numpy().any() and not params["flip"].numpy().all()


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


def _ks_distance(sample: np.ndarray, reference) -> float:
    """Kolmogorov-Smirnov distance of `sample` from a CDF (a function) or from a second sample."""
    sample = np.sort(sample)
    if callable(reference):
        cdf = reference(sample)
    else:
        cdf = np.searchsorted(np.sort(reference), sample, side="right") / len(reference)
    ecdf = np.arange(1, len(sample) + 1) / len(sample)
    return float(np.max(np.maximum(np.abs(ecdf - cdf), np.abs(ecdf - 1 / len(sample) - cdf))))


def _uniform_cdf(low, high):
    return lambda x: np.clip((x - low) / (high - low), 0.0, 1.0)


def _inception_boxes(n, height, width, rng, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
    """Inception's random-resized-crop rule written out in numpy: area fraction ~ U[area], log aspect uniform,
    the first of 10 tries that fits (after rounding), else the centre square."""
    boxes = np.empty((n, 2))
    for i in range(n):
        for _ in range(augment.CROP_ATTEMPTS):
            target = rng.uniform(*area) * height * width
            ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
            h, w = np.round(np.sqrt(target / ratio)), np.round(np.sqrt(target * ratio))
            if 1 <= h <= height and 1 <= w <= width and area[0] <= h * w / (height * width) <= area[1]:
                boxes[i] = h, w
                break
        else:
            boxes[i] = min(height, width), min(height, width)
    return boxes


def _check_boxes(heights, widths, height, width):
    """Crop areas and aspect ratios: inside the paper's ranges (area 8-100%, aspect 3/4-4/3 up to the rounding of
    the sides) and distributed as Inception's rule."""
    fraction, log_aspect = heights * widths / (height * width), np.log(widths / heights)
    assert fraction.min() >= 0.08 - 1e-6 and fraction.max() <= 1.0
    assert np.abs(log_aspect).max() <= np.log(4 / 3) + 2 / min(heights.min(), widths.min())
    reference = _inception_boxes(20_000, height, width, np.random.default_rng(0))
    assert _ks_distance(fraction, reference[:, 0] * reference[:, 1] / (height * width)) < 0.03
    assert _ks_distance(log_aspect, np.log(reference[:, 1] / reference[:, 0])) < 0.03


def test_sampled_parameters_follow_the_papers_distributions():
    """SimCLR (appendix A): crops of 8-100% of the area with aspect 3/4-4/3, brightness, contrast and saturation
    factors ~ U[1 - 0.8 s, 1 + 0.8 s], hue ~ U[-0.2 s, 0.2 s] with s = 1, blur sigma ~ U[0.1, 2.0]."""
    params = {k: v.numpy() for k, v in augment.sample_params(augment.imagenet_spec(), 11, 20_000, 375, 500).items()}
    _check_boxes(params["boxes"][:, 2].astype(float), params["boxes"][:, 3].astype(float), 375, 500)
    jittered = params["jitter"]
    for op in range(3):  # brightness, contrast, saturation
        assert _ks_distance(params["factors"][jittered, op], _uniform_cdf(0.2, 1.8)) < 0.02
    assert _ks_distance(params["hue"][jittered], _uniform_cdf(-0.2, 0.2)) < 0.02
    assert _ks_distance(params["sigma"], _uniform_cdf(0.1, 2.0)) < 0.02


def test_per_image_crops_follow_the_same_distribution():
    """The variable-size path's crops (augment.random_crops) draw boxes as the batched path and flip half."""
    spec = augment.imagenet_spec()
    draws = tf.data.Dataset.range(8000).map(lambda i: augment.crop_boxes(
        [spec], [tf.stack([i, tf.constant(5, tf.int64)])], 375, 500)).batch(8000)
    boxes, flips = next(iter(draws))  # tf.data stacks the list of flips: [8000, 1]
    _check_boxes(boxes.numpy()[:, 0, 2].astype(float), boxes.numpy()[:, 0, 3].astype(float), 375, 500)
    assert abs(flips.numpy().mean() - 0.5) < 0.025


def _smooth_image(height, width):
    y, x = np.mgrid[:height, :width] / max(height, width)
    return np.stack([128 + 100 * np.sin(6 * x + 3 * y), 128 + 100 * np.cos(5 * y), 255 * x * y], -1).astype(np.uint8)


@pytest.mark.parametrize("out_size", [400, 64])
def test_random_crops_decode_only_the_window_like_a_full_decode(out_size):
    """From JPEG bytes the views equal those cut from the decoded image (at 400 px the crops are too small for DCT
    downscaling); at 64 px every crop is shrunk while decoding, which changes pixels only slightly."""
    image = _smooth_image(600, 800)
    specs = (augment.imagenet_spec(), dataclasses.replace(augment.imagenet_spec(), crop_area_min=0.6))
    jpeg, png = tf.io.encode_jpeg(image, quality=95), tf.io.encode_png(image)
    for seed in range(4):
        sizes = (out_size, out_size)
        decoded = np.stack(augment.random_crops(tf.io.decode_jpeg(jpeg), specs, seed, sizes))
        from_jpeg = np.stack(augment.random_crops(jpeg, specs, seed, sizes))
        assert from_jpeg.shape == (2, out_size, out_size, 3) and from_jpeg.dtype == np.float32
        if out_size == 400:
            np.testing.assert_allclose(from_jpeg, decoded, atol=3 / 255)
        else:
            assert np.abs(from_jpeg - decoded).mean() < 0.02
        np.testing.assert_allclose(np.stack(augment.random_crops(png, specs, seed, sizes)),
                                   np.stack(augment.random_crops(tf.constant(image), specs, seed, sizes)), atol=1e-6)


@pytest.mark.parametrize("size", [400, 300, 64, 700])
def test_random_square_decodes_only_the_square_like_a_full_decode(size):
    """on_device's host square: a random square of the shorter side, the same from JPEG bytes (only the square
    decoded; at 300 and 64 px shrunk 2x and 8x while decoding, which changes pixels slightly), PNG bytes and
    pixels; area-averaged where it shrinks (from 600 px) and bilinear where it grows (700)."""
    image = _smooth_image(600, 800)
    jpeg, png = tf.io.encode_jpeg(image, quality=95), tf.io.encode_png(image)
    offsets = set()
    for seed in range(4):
        seed = tf.constant([seed, 7], tf.int64)
        square = augment.random_square(tf.constant(image), seed, size).numpy()
        assert square.shape == (size, size, 3) and square.dtype == np.uint8
        np.testing.assert_array_equal(augment.random_square(png, seed, size).numpy(), square)
        from_jpeg = augment.random_square(jpeg, seed, size).numpy().astype(float)
        full = augment.random_square(tf.io.decode_jpeg(jpeg), seed, size).numpy().astype(float)
        shrunk = 600 >= 2 * size
        assert np.abs(from_jpeg - full).max() <= (12 if shrunk else 3) and np.abs(from_jpeg - full).mean() < 2
        # Which square: the one whose area average (or bilinear enlargement) this is.
        offset = int(tf.cast(tf.random.stateless_uniform([2], seed) * [1.0, 201.0], tf.int32)[1])
        crop = image[:, offset:offset + 600]
        method = "bilinear" if size > 600 else "area"
        expected = tf.saturate_cast(tf.round(tf.image.resize(crop, [size, size], method=method)), tf.uint8)
        np.testing.assert_array_equal(square, expected.numpy())
        offsets.add(offset)
    assert len(offsets) == 4  # the square moves along the longer side


def test_truncated_blur_kernel_moves_values_by_under_one_level():
    spec = augment.imagenet_spec()
    radius = augment.blur_radius(spec, 224)
    assert radius == 6 and int(224 * spec.blur_kernel_fraction) // 2 == 11  # SimCLR's kernel: 23 taps
    images = tf.random.stateless_uniform([2, 64, 64, 3], [0, 1])
    sigma = tf.constant([spec.blur_sigma_max, 1.0])
    blurred = [augment._blur_along(tf.reshape(augment._blur_along(images, augment._blur_kernel(sigma, r), r, 1),
                                              images.shape), augment._blur_kernel(sigma, r), r, 2)
               for r in (radius, 11)]
    assert np.abs(blurred[0].numpy() - blurred[1].numpy()).max() < 1 / 255
