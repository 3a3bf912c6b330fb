"""SimCLR augmentations on whole batches [B,H,W,3], with stateless per-example randomness.

Every op works on the batch at once with per-example parameters (boxes, factors, masks), because TF's
per-element overhead costs more than the arithmetic at 32 px. An op whose probability is 0 is left out of the
graph. Randomness comes only from `seed` (an int or a [2] int tensor), so the same seed gives the same views,
eagerly or inside tf.data.

Order, as in SimCLR (Chen et al., 2020, appendix A) and BYOL: random resized crop and flip, colour jitter,
grayscale, Gaussian blur, solarize.

Colour jitter, applied with `jitter_prob`, runs its four ops in a random order per example:
- brightness multiplies by f ~ U[max(0, 1-b), 1+b] (SimCLR v2's choice; v1 added a delta),
- contrast blends with the per-image, per-channel mean: f x + (1-f) mean(x),
- saturation blends with the pixel's grey value: f x + (1-f) grey(x),
- hue rotates H in HSV by d ~ U[-h, h] turns.
The first three are affine colour maps, so the ops on either side of hue (and grayscale after them) are composed
into one affine map per image. Values are therefore clipped to [0, 1] around the hue step and at the end, not
after every op as in the reference; the two differ only where an intermediate value leaves [0, 1].

Each step (crop, each colour map, the hue rotation, each blur pass) is an XLA-compiled function: on CPU, TF's
op-by-op kernels spent ~4x longer on this elementwise chain (hue alone: 90 us/view op-by-op, 156 us/view with
tf.image.adjust_hue per image, 20 us/view fused, at 32 px); blur is a sum of shifted copies for the same reason.
Large batches run in cache-sized pieces (`in_pieces`); docs/scaling.md has the 224 px figures.

Variable-size images (ImageNet) are cropped and flipped per image first, from their JPEG bytes (`random_crops`:
only the crops' window is decoded), and the rest runs per batch on the cropped views (`after_crop`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from sslx.config import CROP_KEYS, crop_entries

GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luma, as tf.image.rgb_to_grayscale
CROP_ATTEMPTS = 10  # boxes tried per example before falling back to the centre crop, as Inception's crop
DCT_FACTORS = (1, 2, 4, 8)  # the downscaling factors libjpeg applies while decoding
BLUR_TRUNCATE = 3.0  # blur kernels end at 3 sigma_max (see blur_radius)
AFFINE_OPS = ("brightness", "contrast", "saturation")  # jitter ops; hue is the fourth, index 3
MATMUL_RESIZE_MAX_SIDE = 64  # images up to this side are resized along the width by a product (_crop_and_flip)
PIECE_BYTES = 4 << 20  # float32 views augmented at a time (see in_pieces)
_DRAWS = ("crop", "flip", "jitter", "jitter_order", "grayscale", "blur", "solarize")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """One view's augmentation; strengths left as None derive from `jitter_strength` s (0.8 s; hue 0.2 s)."""
    crop_area_min: float = 0.08
    crop_area_max: float = 1.0
    aspect_min: float = 3 / 4
    aspect_max: float = 4 / 3
    flip_prob: float = 0.5
    jitter_strength: float = 1.0
    jitter_prob: float = 0.8
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    blur_kernel_fraction: float = 0.1  # kernel size as a fraction of the output side
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{field.name}={value} must lie in [0, 1].")
        if not 0.0 < self.crop_area_min <= self.crop_area_max <= 1.0:
            raise ValueError(f"need 0 < crop_area_min <= crop_area_max <= 1, got "
                             f"{self.crop_area_min}, {self.crop_area_max}.")
        if not 0.0 < self.aspect_min <= self.aspect_max:
            raise ValueError(f"need 0 < aspect_min <= aspect_max, got {self.aspect_min}, {self.aspect_max}.")

    def jitter_strengths(self) -> dict[str, float]:
        """Brightness, contrast, saturation and hue strengths, derived from s where not set."""
        derived = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
        return {op: (getattr(self, op) if getattr(self, op) is not None else scale * self.jitter_strength)
                for op, scale in derived.items()}


def imagenet_spec() -> AugmentSpec:
    return AugmentSpec()


def cifar_spec() -> AugmentSpec:
    # SimCLR's CIFAR-10 setting: weaker colour (s=0.5) and no blur on 32 px images.
    return AugmentSpec(jitter_strength=0.5, blur_prob=0.0)


def identity_spec() -> AugmentSpec:
    """No augmentation: the full image (centre square if not square) resized, for ablations."""
    return AugmentSpec(crop_area_min=1.0, crop_area_max=1.0, aspect_min=1.0, aspect_max=1.0, flip_prob=0.0,
                       jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


PRESETS = {"cifar": cifar_spec, "imagenet": imagenet_spec, "none": identity_spec}
# config.augment keys that choose where augmentation runs (sslx.data.pipeline), not what a view's spec is.
PIPELINE_KEYS = ("on_device", "host_size")


def spec_from_config(cfg: Any) -> tuple[AugmentSpec, ...]:
    """One spec per view from `config.augment`: a preset, shared overrides, then each view's own.

    Without `crops` these are SimCLR's two views, `view1`/`view2` overriding the shared settings. With `crops`
    (multi-crop: DINO, SwAV) each entry {count, size, AugmentSpec fields...} adds `count` views with its settings
    over the shared ones, in the listed order (the global crops first, by convention of those methods).
    """
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    for key in PIPELINE_KEYS:
        values.pop(key, None)
    preset = values.pop("preset", "imagenet")
    if preset not in PRESETS:
        raise ValueError(f"config.augment.preset={preset!r} is not one of {sorted(PRESETS)}.")
    crops = values.pop("crops", None) or ()
    per_view = [values.pop("view1", None) or {}, values.pop("view2", None) or {}]
    shared = _replace(PRESETS[preset](), values, "config.augment")
    if not crops:
        return tuple(_replace(shared, dict(overrides), f"config.augment.view{i + 1}")
                     for i, overrides in enumerate(per_view))
    if any(per_view):
        raise ValueError("config.augment.view1/view2 set the two default views; with config.augment.crops put those "
                         "settings in the crops' entries instead.")
    specs = []
    for i, crop in enumerate(crop_entries(crops)):
        spec = _replace(shared, {k: v for k, v in crop.items() if k not in CROP_KEYS}, f"config.augment.crops[{i}]")
        specs.extend([spec] * crop["count"])
    return tuple(specs)


def _replace(spec: AugmentSpec, overrides: dict, prefix: str) -> AugmentSpec:
    known = {field.name for field in dataclasses.fields(AugmentSpec)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"{prefix}.{key} is not an augmentation setting; known: {', '.join(sorted(known))}.")
    return dataclasses.replace(spec, **overrides)


def as_seed(seed: Any) -> tf.Tensor:
    """A [2] int64 stateless seed from an int or a [2] tensor."""
    seed = tf.cast(seed, tf.int64)
    return tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else seed


def sample_params(spec: AugmentSpec, seed: Any, batch, height, width) -> dict[str, tf.Tensor]:
    """Every random choice `augment_batch` makes for a batch, per example (exposed so tests can count them).

    'boxes' int32 [B,4] (top, left, height, width) in pixels; boolean [B] masks 'flip', 'jitter', 'grayscale',
    'blur', 'solarize'; jitter 'factors' [B,3] (1 where no jitter), 'hue' [B] (0 where none), 'order' [B,4]
    (the step at which brightness, contrast, saturation, hue run); 'sigma' [B].
    """
    draws = dict(zip(_DRAWS, tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), len(_DRAWS)))))
    coin = lambda name, p: tf.random.stateless_uniform([batch], draws[name]) < p  # noqa: E731
    params = {
        "boxes": _sample_boxes(spec, draws["crop"], batch, height, width),
        "flip": coin("flip", spec.flip_prob),
        "jitter": coin("jitter", spec.jitter_prob),
        "grayscale": coin("grayscale", spec.grayscale_prob),
        "blur": coin("blur", spec.blur_prob),
        "solarize": coin("solarize", spec.solarize_prob),
    }
    strengths = spec.jitter_strengths()
    amount = tf.random.stateless_uniform([batch, 4], tf.random.experimental.stateless_fold_in(draws["jitter"], 1))
    low = tf.constant([max(0.0, 1.0 - strengths[op]) for op in AFFINE_OPS])
    high = tf.constant([1.0 + strengths[op] for op in AFFINE_OPS])
    on = params["jitter"][:, None]
    params["factors"] = tf.where(on, low + (high - low) * amount[:, :3], 1.0)
    params["hue"] = tf.where(on[:, 0], strengths["hue"] * (2.0 * amount[:, 3] - 1.0), 0.0)
    # A random permutation per example: the rank of 4 uniform draws.
    keys = tf.random.stateless_uniform([batch, 4], draws["jitter_order"])
    params["order"] = tf.argsort(tf.argsort(keys, axis=1), axis=1)
    sigma = tf.random.stateless_uniform([batch], tf.random.experimental.stateless_fold_in(draws["blur"], 1),
                                        spec.blur_sigma_min, spec.blur_sigma_max)
    params["sigma"] = sigma
    return params


def _sample_boxes(spec: AugmentSpec, seed: tf.Tensor, batch, height, width) -> tf.Tensor:
    """Inception-style boxes: area fraction ~ U[min, max], aspect log-uniform; first fitting attempt wins."""
    area_seed, aspect_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    h_img, w_img = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    shape = [batch, CROP_ATTEMPTS]
    area = tf.random.stateless_uniform(shape, area_seed, spec.crop_area_min, spec.crop_area_max) * h_img * w_img
    aspect = tf.exp(tf.random.stateless_uniform(shape, aspect_seed, math.log(spec.aspect_min),
                                                math.log(spec.aspect_max)))
    h = tf.round(tf.sqrt(area / aspect))
    w = tf.round(tf.sqrt(area * aspect))
    fraction = h * w / (h_img * w_img)  # after rounding, so every accepted box honours the area range
    fits = ((h >= 1) & (w >= 1) & (h <= h_img) & (w <= w_img)
            & (fraction >= spec.crop_area_min) & (fraction <= spec.crop_area_max))
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    side = tf.minimum(h_img, w_img)
    h = tf.where(found, tf.gather(h, first, batch_dims=1), side)
    w = tf.where(found, tf.gather(w, first, batch_dims=1), side)
    spare = tf.stack([h_img - h, w_img - w], axis=1)
    offset = tf.random.stateless_uniform([batch, 2], offset_seed)
    # A fallback box is centred; a sampled one is placed uniformly where it fits.
    offset = tf.where(found[:, None], tf.floor(offset * (spare + 1.0)), tf.floor(spare / 2.0))
    return tf.cast(tf.concat([tf.minimum(offset, spare), h[:, None], w[:, None]], axis=1), tf.int32)


def augment_batch(images: tf.Tensor, spec: AugmentSpec, seed: Any, out_size: int) -> tf.Tensor:
    """[B,H,W,3] uint8 (0..255) or float (0..1) images -> [B,out_size,out_size,3] float32 views in [0, 1]."""
    shape = tf.shape(images)
    return apply_params(images, spec, sample_params(spec, seed, shape[0], shape[1], shape[2]), out_size)


def apply_params(images: tf.Tensor, spec: AugmentSpec, params: dict[str, tf.Tensor], out_size: int) -> tf.Tensor:
    """`augment_batch` with its random choices given (a `sample_params` dict), e.g. to compare implementations."""
    return _augment_fn(spec, out_size)(images, params)


def blur_radius(spec: AugmentSpec, out_size: int) -> int:
    """Taps either side of the blur kernel: SimCLR's kernel of 10% of the side (made odd), cut at
    BLUR_TRUNCATE x the largest sigma, beyond which a Gaussian holds 0.1% of its weight (23 -> 13 taps at 224 px
    with sigma <= 2; a blurred value moves by under 0.25% of the range, less than one uint8 level)."""
    return min(int(out_size * spec.blur_kernel_fraction) // 2, math.ceil(BLUR_TRUNCATE * spec.blur_sigma_max))


def _augment_fn(spec: AugmentSpec, out_size: int):
    stages = batch_stages(spec, out_size)
    apply_piece = functools.partial(run_stages, tuple(stages.values()))
    return lambda images, params: in_pieces(apply_piece, images, params, piece_size(out_size),
                                            piece_order(stages, params))


def run_stages(stages: Sequence[Callable[[tf.Tensor, dict], tf.Tensor]], images: tf.Tensor,
               params: dict[str, tf.Tensor]) -> tf.Tensor:
    """`batch_stages` functions applied in turn."""
    for stage in stages:
        images = stage(images, params)
    return images


def piece_order(stages: dict, params: dict[str, tf.Tensor]) -> tf.Tensor | None:
    """Views grouped by the steps they skip, so that whole pieces skip them: where `stages` blur, the blurred views
    first (half the views in SimCLR's recipe skip the blur); where they change colour, within either group the
    views that need the same colour steps together (`_colour_steps`; in SimCLR's recipe a sixth skip all three,
    a fifth the affine map before the hue rotation, and a sixth the one after it)."""
    if "blur" not in stages and "colour" not in stages:
        return None
    blur = params["blur"] if "blur" in stages else tf.zeros_like(params["blur"])
    rank = tf.zeros_like(blur, tf.int32)
    if "colour" in stages:
        # Steps needed (first, hue, second) as a 3-bit code, ranked so that neighbours differ by one step:
        # first+hue, all three, hue+second, second only, none (without a hue shift, first joins first+hue and
        # first+second joins all three).
        code = sum(tf.cast(step, tf.int32) * weight for step, weight in zip(_colour_steps(params)[1:], (4, 2, 1)))
        rank = tf.gather(tf.constant([4, 3, 2, 2, 0, 1, 0, 1]), code)
    return tf.argsort(tf.where(blur, rank, 9 - rank), stable=True)  # the sharp views in reverse: runs meet


def _colour_steps(params: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
    """The jitter ops each view applies before the hue rotation [B,3] (all of them without a hue shift), and
    which views each colour step changes [B]: the affine map before the rotation, the rotation, the affine map
    after it (later jitter ops or grayscale). Views without jitter have factors 1 and no hue shift."""
    shifted = params["hue"] != 0
    hue_at = tf.where(shifted, params["order"][:, 3], 4)  # the step at which hue runs, after all without a shift
    before = params["order"][:, :3] < hue_at[:, None]
    jitter = params["jitter"]
    return (before, jitter & tf.reduce_any(before, axis=1), shifted,
            params["grayscale"] | (jitter & ~tf.reduce_all(before, axis=1)))


def piece_size(out_size: int) -> int:
    """Views per piece of a batch (`in_pieces`): PIECE_BYTES of float32 views (6 at 224 px, a batch at 32)."""
    return max(1, PIECE_BYTES // (out_size * out_size * 3 * 4))


def in_pieces(fn: Callable[[tf.Tensor, dict], tf.Tensor], images: tf.Tensor, params: dict[str, tf.Tensor],
              size: int, order: tf.Tensor | None = None) -> tf.Tensor:
    """`fn(images, params)` on pieces of `size` examples, consecutive or taken in `order` (a permutation), put
    back in place.

    At 224 px a batch of 256 views is 150 MB: each stage over the whole batch streams it through memory (and
    faults in fresh pages), while a piece stays in cache from one stage to the next."""
    batch = images.shape[0]
    if batch is None or batch <= size:  # a batch of unknown size runs in one piece
        return fn(images, params)
    order = tf.range(batch) if order is None else order
    pieces = [order[i:i + size] for i in range(0, batch, size)]
    return tf.dynamic_stitch(pieces, [fn(tf.gather(images, piece), {name: tf.gather(value, piece)
                                                                      for name, value in params.items()})
                                      for piece in pieces])


def batch_stages(spec: AugmentSpec, out_size: int) -> dict[str, Callable[[tf.Tensor, dict], tf.Tensor]]:
    """The stages `augment_batch` runs in order on each piece of a batch, by name, each (images, sample_params)
    -> views (what sslx.data.bench times): 'crop' (crop, flip and resize, or only the cast to float), 'colour'
    (jitter and grayscale) where the spec has any, then 'blur' (two passes, clipping, solarize) or, without blur,
    'solarize' where the spec has it.

    Each step is an XLA function (~4x faster than TF's op-by-op kernels on CPU) of its own: fused together, XLA
    computes a producer again for every element that reads it (the crop's interpolation for each output channel
    of the colour maps, each pixel's hue for each of its channels, the blur's first pass for every tap of the
    second), which cost more than writing the intermediate to cache. The random draws stay outside, so results do
    not depend on XLA's RNG."""
    stages = {"crop": functools.partial(_crop, spec=spec, out_size=out_size)}
    if spec.grayscale_prob > 0 or (spec.jitter_prob > 0 and any(spec.jitter_strengths().values())):
        stages["colour"] = functools.partial(_color, spec=spec)
    radius = blur_radius(spec, out_size) if spec.blur_prob > 0 else 0

    def solarize(views, params):
        if not spec.solarize_prob:
            return views
        return tf.reshape(_finish_fn(spec, 0)(views, None, params["solarize"]), tf.shape(views))

    if radius:
        def blurred(views, params, kernel):  # each pass returns rows (see _blur_along), back to views here
            half = tf.reshape(_blur_pass_fn(radius)(views, kernel), tf.shape(views))
            return tf.reshape(_finish_fn(spec, radius)(half, kernel, params["solarize"]), tf.shape(views))

        def blur(views, params):
            kernel = _blur_kernel(tf.where(params["blur"], params["sigma"], 0.0), radius)
            return tf.cond(tf.reduce_any(params["blur"]), lambda: blurred(views, params, kernel),
                           lambda: solarize(views, params))
        stages["blur"] = blur
    elif spec.solarize_prob > 0:
        stages["solarize"] = solarize
    return stages


def _crop(images: tf.Tensor, params: dict[str, tf.Tensor], spec: AugmentSpec, out_size: int) -> tf.Tensor:
    """Each example's box resized to out_size and flipped, as float32 in [0, 1]; views that `random_crops` made
    are only cast."""
    if _is_full_frame(spec) and images.shape[1] == images.shape[2] == out_size:
        return images if images.dtype == tf.float32 else _as_float_fn(images)
    return tf.reshape(_crop_and_flip_fn(out_size)(images, params["boxes"], params["flip"]),
                      [-1, out_size, out_size, 3])


@tf.function(jit_compile=True)
def _as_float_fn(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) * (1 / 255 if images.dtype == tf.uint8 else 1.0)


@functools.cache
def _crop_and_flip_fn(out_size: int):
    return tf.function(lambda images, boxes, flip: _crop_and_flip(images, boxes, flip, out_size), jit_compile=True)


@functools.cache
def _finish_fn(spec: AugmentSpec, radius: int):
    """The blur's pass along the width (if radius > 0), clipping (the normalised kernel can sum to 1 + eps) and
    solarize, [B,H,W,3] -> rows [B,H,W*3] (see _blur_along)."""
    def apply(views, kernel, solarize):
        rows = tf.clip_by_value(_blur_along(views, kernel, radius, axis=2), 0.0, 1.0) if radius > 0 else _rows(views)
        if spec.solarize_prob > 0:
            rows = tf.where(solarize[:, None, None] & (rows >= spec.solarize_threshold), 1.0 - rows, rows)
        return rows
    return tf.function(apply, jit_compile=True)


@functools.cache
def _blur_pass_fn(radius: int):
    """The blur's pass along the height, an XLA function of its own (see batch_stages): [B,H,W,3] -> rows."""
    return tf.function(lambda views, kernel: _blur_along(views, kernel, radius, axis=1), jit_compile=True)


def _is_full_frame(spec: AugmentSpec) -> bool:
    return (spec.crop_area_min, spec.crop_area_max, spec.aspect_min, spec.aspect_max, spec.flip_prob) == \
        (1.0, 1.0, 1.0, 1.0, 0.0)


def augment_views(images: tf.Tensor, specs: Sequence[AugmentSpec], seed: Any,
                  sizes: Sequence[int]) -> tuple[tf.Tensor, ...]:
    """[B,H,W,3] images -> one [B,S,S,3] float32 view per spec, view v of side sizes[v] drawn from the v-th of
    `len(specs)` seeds split from `seed` (so two views draw exactly as SimCLR's two-view pipeline always has)."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), len(specs)))
    return tuple(augment_batch(images, spec, view_seed, size) for spec, view_seed, size in zip(specs, seeds, sizes))


def random_crops(image: tf.Tensor, specs: Sequence[AugmentSpec], seed: Any,
                 sizes: Sequence[int]) -> tuple[tf.Tensor, ...]:
    """One image of any size -> a float32 view [S,S,3] in [0, 1] per spec, of side sizes[v]: each spec's random
    resized crop, flipped with its flip_prob; the rest of each view's augmentation then runs per batch
    (`after_crop`).

    `image` is uint8 [H,W,3] or its encoded bytes. JPEG bytes are decoded once for all the views and only within
    the window holding their crops (tf.io.decode_and_crop_jpeg); where every crop is at least 2, 4 or 8 times its
    view's side, libjpeg also shrinks by that factor as it decodes (DCT-domain scaling), and the crops' edges round
    outwards to the shrunk pixel grid. Other formats are decoded whole.
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), len(specs)))
    if image.dtype != tf.string:
        boxes, flips = crop_boxes(specs, seeds, tf.shape(image)[0], tf.shape(image)[1])
        return _resize_crops(image, boxes, flips, sizes)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(image)
        boxes, flips = crop_boxes(specs, seeds, shape[0], shape[1])
        return tf.switch_case(_dct_shrink(tf.reduce_min(boxes[:, 2:], axis=1), sizes),
                              [functools.partial(_decode_crops, image, shape, boxes, flips, sizes, factor)
                               for factor in DCT_FACTORS])

    def other():
        decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
        boxes, flips = crop_boxes(specs, seeds, tf.shape(decoded)[0], tf.shape(decoded)[1])
        return _resize_crops(decoded, boxes, flips, sizes)

    return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def random_square(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """A square of the shorter side of `image` (uint8 [H,W,3] or its encoded bytes) at a random place along the
    longer one, resized to uint8 [size, size, 3]: what the on_device host side ships of a variable-size image.

    JPEG bytes decode only the square, shrunk while decoding by 2, 4 or 8 where the square is at least that many
    times `size` (DCT-domain scaling). Shrinking averages pixel areas (tf.image.resize's 'area'): antialiased, and
    much cheaper than its antialias=True filter; growing is bilinear.
    """
    def place(height, width):
        side = tf.minimum(height, width)
        spare = tf.cast(tf.stack([height, width]) - side, tf.float32)
        return tf.cast(tf.random.stateless_uniform([2], seed) * (spare + 1.0), tf.int32), side

    def pixels(decoded):
        offset, side = place(tf.shape(decoded)[0], tf.shape(decoded)[1])
        return _resized_square(decoded[offset[0]:offset[0] + side, offset[1]:offset[1] + side], size)

    if image.dtype != tf.string:
        return pixels(image)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(image)
        offset, side = place(shape[0], shape[1])
        return tf.switch_case(_dct_shrink(side[None], [size]),
                              [functools.partial(_decode_square, image, offset, side, size, factor)
                               for factor in DCT_FACTORS])

    return tf.cond(tf.io.is_jpeg(image), jpeg,
                   lambda: pixels(tf.io.decode_image(image, channels=3, expand_animations=False)))


def _decode_square(encoded: tf.Tensor, offset: tf.Tensor, side: tf.Tensor, size: int, factor: int) -> tf.Tensor:
    """The square at `offset` of `side` pixels decoded at 1/factor scale (inside libjpeg's ceil(side / factor)
    output), resized to `size`."""
    window = tf.concat([offset // factor, tf.fill([2], side // factor)], axis=0)
    return _resized_square(tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=factor), size)


def _resized_square(square: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [size, size, 3]: area averages where `square` shrinks, bilinear where it grows."""
    resized = tf.cond(tf.shape(square)[0] < size, lambda: tf.image.resize(square, [size, size]),
                      lambda: tf.image.resize(square, [size, size], method="area"))
    return tf.saturate_cast(tf.round(resized), tf.uint8)


def _dct_shrink(sides: tf.Tensor, sizes: Sequence[int]) -> tf.Tensor:
    """The index in DCT_FACTORS of the largest factor libjpeg may shrink by while decoding: every crop side
    sides[v] at least that factor times its output side sizes[v]."""
    return tf.reduce_sum([tf.cast(tf.reduce_all(sides >= [factor * size for size in sizes]), tf.int32)
                          for factor in DCT_FACTORS[1:]])


def crop_boxes(specs: Sequence[AugmentSpec], seeds: Sequence[tf.Tensor], height, width) -> tuple[tf.Tensor, list]:
    """`random_crops`'s choices for an image of height x width: int32 [V,4] boxes (top, left, height, width) and a
    flip flag per view, view v drawn from seeds[v] (exposed so tests can count them)."""
    boxes, flips = [], []
    for spec, seed in zip(specs, seeds):
        draws = tf.unstack(tf.random.experimental.stateless_split(seed, len(_DRAWS)))
        boxes.append(_sample_boxes(spec, draws[0], 1, height, width)[0])
        flips.append(tf.random.stateless_uniform([], draws[1]) < spec.flip_prob)
    return tf.stack(boxes), flips


def _decode_crops(encoded: tf.Tensor, shape: tf.Tensor, boxes: tf.Tensor, flips: list, sizes: Sequence[int],
                  factor: int) -> tuple[tf.Tensor, ...]:
    """Decodes the window around `boxes` at 1/factor scale (libjpeg's output side there is ceil(side / factor))
    and resizes each box from it."""
    scaled = -(-shape[:2] // factor)
    starts = boxes[:, :2] // factor
    ends = tf.minimum(-(-(boxes[:, :2] + boxes[:, 2:]) // factor), scaled)
    corner = tf.reduce_min(starts, axis=0)
    window = tf.concat([corner, tf.reduce_max(ends, axis=0) - corner], axis=0)
    decoded = tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=factor)
    return _resize_crops(decoded, tf.concat([starts - corner, ends - starts], axis=1), flips, sizes)


def _resize_crops(image: tf.Tensor, boxes: tf.Tensor, flips: list, sizes: Sequence[int]) -> tuple[tf.Tensor, ...]:
    """Each box of `image`, flipped where `flips` says, resized bilinearly to its view's side with the output's
    corners on the centres of the box's corner pixels, as `_crop_and_flip`; uint8 input is scaled to [0, 1]."""
    views = []
    for box, flip, size in zip(tf.unstack(boxes), flips, sizes):
        crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        crop = tf.cond(flip, lambda c=crop: tf.reverse(c, [1]), lambda c=crop: c)
        # Cast first: TF's bilinear kernel converts every uint8 tap it reads and runs far slower on uint8 than
        # on float input, with the same result.
        view = tf.raw_ops.ResizeBilinear(images=tf.cast(crop, tf.float32)[None], size=[size, size],
                                         align_corners=True)[0]
        views.append(view * (1 / 255) if image.dtype == tf.uint8 else view)
    return tuple(views)


def after_crop(spec: AugmentSpec) -> AugmentSpec:
    """The spec for views already cropped and flipped by `random_crops`: the batch step leaves their pixels where
    they are."""
    return dataclasses.replace(spec, crop_area_min=1.0, crop_area_max=1.0, aspect_min=1.0, aspect_max=1.0,
                               flip_prob=0.0)


def eval_crop_fraction(image_shape) -> float:
    """The centre crop of evaluation for data of `image_shape` (None where sizes vary): SimCLR keeps images of at
    most 64 px whole (CIFAR) and takes 87.5% of the shorter side of larger ones (ImageNet's 224 of 256)."""
    return 1.0 if all(side is not None and side <= 64 for side in image_shape[:2]) else 0.875


def eval_preprocess(images: tf.Tensor, out_size: int, crop_fraction: float = 0.875) -> tf.Tensor:
    """Centre square crop of `crop_fraction` of the shorter side, resized; [H,W,3] or [B,H,W,3] -> float [0, 1]."""
    images = tf.image.convert_image_dtype(images, tf.float32)
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
    images = tf.image.crop_to_bounding_box(images, (height - side) // 2, (width - side) // 2, side, side)
    return tf.clip_by_value(tf.image.resize(images, [out_size, out_size], method="bilinear"), 0.0, 1.0)


def _crop_and_flip(images: tf.Tensor, boxes: tf.Tensor, flip: tf.Tensor, out_size: int) -> tf.Tensor:
    """Bilinear resize of each box to [S,S,3], output corners on the centres of the box's corner pixels (as
    tf.image.crop_and_resize), written as gathers of rows then columns, or for small images (sides of at most
    MATMUL_RESIZE_MAX_SIDE) as a product with each example's column weights and then gathers of whole rows: a
    gather of single pixels (3 values) is slow in XLA's CPU loops, and a product's cost grows with the side.
    Returns rows [B,S,S*3] (see _blur_along).

    Why not crop_and_resize: its normalised boxes come back to pixels with rounding, so a box at the image's edge
    can sample just outside it and get a black row or column (2.6% of views at 32 px, 0.3% at 224).
    """
    boxes = tf.cast(boxes, tf.float32)
    steps = tf.range(out_size, dtype=tf.float32) / max(out_size - 1, 1)
    rows = boxes[:, 0:1] + steps * (boxes[:, 2:3] - 1.0)
    cols = boxes[:, 1:2] + steps * (boxes[:, 3:4] - 1.0)
    cols = tf.where(flip[:, None], tf.reverse(cols, [1]), cols)
    scale = 1 / 255 if images.dtype == tf.uint8 else 1.0
    height, width = images.shape[1:3]
    if height and width and max(height, width) <= MATMUL_RESIZE_MAX_SIDE:  # unknown sides: the gathers
        columns = tf.einsum("bsw,bhwc->bhsc", _interpolation_weights(cols, width) * scale, tf.cast(images, tf.float32))
        return _interpolate(_rows(columns), rows, axis=1)
    return _rows(_interpolate(_interpolate(tf.cast(images, tf.float32), rows, axis=1), cols, axis=2)) * scale


def _interpolate(images: tf.Tensor, coords: tf.Tensor, axis: int) -> tf.Tensor:
    """Linear interpolation of [B,H,W,C] or rows [B,H,W*C] `images` along `axis` (1 or 2) at per-example indices
    coords [B,S]."""
    below = tf.floor(coords)
    fraction = tf.reshape(coords - below, [-1] + [1] * (axis - 1) + [coords.shape[1]]
                          + [1] * (images.shape.rank - axis - 1))
    below = tf.cast(below, tf.int32)
    above = tf.minimum(below + 1, tf.shape(images)[axis] - 1)
    low = tf.gather(images, below, axis=axis, batch_dims=1)
    return low + (tf.gather(images, above, axis=axis, batch_dims=1) - low) * fraction


def _interpolation_weights(coords: tf.Tensor, length: int) -> tf.Tensor:
    """[B,S,length] weights of linear interpolation at coords [B,S] along an axis of `length` pixels."""
    below = tf.floor(coords)
    fraction = (coords - below)[..., None]
    below = tf.cast(below, tf.int32)[..., None]
    pixels = tf.range(length)
    return (tf.where(pixels == below, 1.0 - fraction, 0.0)
            + tf.where(pixels == tf.minimum(below + 1, length - 1), fraction, 0.0))


def _color(images: tf.Tensor, params: dict[str, tf.Tensor], spec: AugmentSpec) -> tf.Tensor:
    """Colour jitter then grayscale, as per-image affine maps before and after the hue rotation, or one map without
    hue jitter; a step that no view of `images` needs is skipped (see piece_order)."""
    before, first, shifted, second = _colour_steps(params)
    factors, grey = params["factors"], params["grayscale"]
    if not (spec.jitter_prob > 0 and spec.jitter_strengths()["hue"] > 0):
        return _where_needed(first | second, lambda x: _affine_fn(x, factors, before, grey), images)
    images = _where_needed(first, lambda x: _affine_fn(x, factors, before, tf.zeros_like(grey)), images)
    images = _where_needed(shifted, lambda x: _shift_hue(x, params["hue"]), images)
    return _where_needed(second, lambda x: _affine_fn(x, factors, ~before, grey), images)


def _where_needed(needed: tf.Tensor, step: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor) -> tf.Tensor:
    """`step(images)` if any example is `needed`, else `images`."""
    return tf.cond(tf.reduce_any(needed), lambda: step(images), lambda: images)


@tf.function(jit_compile=True)
def _affine_fn(images: tf.Tensor, factors: tf.Tensor, selected: tf.Tensor, grey: tf.Tensor) -> tf.Tensor:
    return _apply_affine(images, *_affine(factors, selected, grey, _channel_means(images)))


def _affine(factors: tf.Tensor, selected: tf.Tensor, grey: tf.Tensor,
            means: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The selected brightness/contrast/saturation ops, then grey where `grey`, as x -> A x + t per example, for
    images of channel `means` [B,3].

    With P = 1 w^T (the grey value in every channel) the three ops are b I, c I + (1 - c) mean, s I + (1 - s) P:
    polynomials in P, and the mean commutes with affine maps, so without clipping between them their order does
    not matter and the composite is A = b c S, t = (1 - c) b S mean(x), S = s I + (1 - s) P.
    """
    brightness, contrast, saturation = tf.unstack(tf.where(selected, factors, 1.0), axis=1)
    eye = tf.eye(3, batch_shape=[tf.shape(factors)[0]])
    grey_rows = tf.constant([GREY_WEIGHTS] * 3)
    sat = saturation[:, None, None] * eye + (1.0 - saturation)[:, None, None] * grey_rows
    sat = tf.where(grey[:, None, None], tf.matmul(grey_rows + tf.zeros_like(eye), sat), sat)
    matrix = (brightness * contrast)[:, None, None] * sat
    offset = ((1.0 - contrast) * brightness)[:, None] * tf.linalg.matvec(sat, means)
    return matrix, offset


def _channel_means(images: tf.Tensor) -> tf.Tensor:
    """[B,H,W,3] -> [B,3] per-image channel means, summed as rows of up to 32 pixels first: XLA's CPU reduction
    over H and W at once keeps 3 scalar sums and runs several times slower."""
    height, width, channels = images.shape[1:]
    pixels = math.gcd(height * width, 32)
    rows = tf.reduce_sum(tf.reshape(images, [-1, height * width // pixels, pixels * channels]), axis=1)
    return tf.reduce_sum(tf.reshape(rows, [-1, pixels, channels]), axis=1) / (height * width)


def _apply_affine(images: tf.Tensor, matrix: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    # Written as each input channel times a column of the matrix: a 3-wide reduction per output value is far slower
    # in XLA's CPU loops.
    mapped = sum(images[..., k:k + 1] * matrix[:, None, None, :, k] for k in range(3)) + offset[:, None, None, :]
    return tf.clip_by_value(mapped, 0.0, 1.0)


def _shift_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Rotates HSV hue by `delta` turns per example, in RGB via the hexcone formulas (S and V unchanged)."""
    return _rgb_with_hue_fn(images, _shifted_hue_fn(images, delta))


@tf.function(jit_compile=True)
def _shifted_hue_fn(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """[B,H,W,3] RGB -> hue in sextants shifted by `delta` turns, a plane [B,H,W]: computed once per pixel here,
    where a function returning the rotated channels computed it once per channel (and one returning value and
    chroma planes too read the image once for each)."""
    red, green, blue = tf.unstack(images, axis=-1)
    value, chroma = _value_and_chroma(red, green, blue)
    inverse = 1.0 / tf.where(chroma > 0, chroma, 1.0)
    # The largest channel picks the sector.
    hue = tf.where(value == red, (green - blue) * inverse,
                   tf.where(value == green, (blue - red) * inverse + 2.0, (red - green) * inverse + 4.0))
    return hue + 6.0 * delta[:, None, None]


@tf.function(jit_compile=True)
def _rgb_with_hue_fn(images: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
    # Channel n of the result: value - chroma * clip(2 - |k - 2|, 0, 1) with k = (n + hue) mod 6, n = 5, 3, 1.
    value, chroma = (plane[..., None] for plane in _value_and_chroma(*tf.unstack(images, axis=-1)))
    k = hue[..., None] + tf.constant([5.0, 3.0, 1.0])
    k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
    return value - chroma * tf.clip_by_value(2.0 - tf.abs(k - 2.0), 0.0, 1.0)


def _value_and_chroma(red: tf.Tensor, green: tf.Tensor, blue: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """HSV's value and chroma (max - min) per pixel, as maxima and minima of the channels taken one by one (a
    reduction over the channel axis ran slower in XLA's CPU loops)."""
    value = tf.maximum(tf.maximum(red, green), blue)
    return value, value - tf.minimum(tf.minimum(red, green), blue)


def _blur_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """[B, 2 radius + 1] normalised Gaussian taps per example; sigma 0 gives the identity."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / tf.maximum(sigma, 1e-3)[:, None]))
    kernel = tf.where(sigma[:, None] > 0, kernel, tf.cast(taps == 0, tf.float32))
    return kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)


def _blur_along(images: tf.Tensor, kernel: tf.Tensor, radius: int, axis: int) -> tf.Tensor:
    """One pass of a separable Gaussian blur along `axis` (1 or 2), reflect-padded so borders keep brightness.

    Written as a sum of shifted copies of the image's rows of W x 3 values (a step along the width is 3 values):
    inside XLA each tap is a multiply-add of contiguous vectors, where a depthwise convolution with per-example
    kernels (batch folded into channels) and shifts of [B,H,W,3] (3-wide inner loops) run slower. Along the height
    each tap gathers whole rows at reflected indices, where they are: from a padded input, XLA first wrote a
    padded copy of the piece, a pass over memory of its own. Returns the rows [B,H,W*3]: XLA's CPU loops run over
    the output's shape, and with 3 innermost they gather strided values into each vector; callers reshape outside
    the XLA function, where a reshape costs nothing.
    """
    height, width, channels = images.shape[1:]
    if axis == 1:
        rows = _rows(images)
        shifted = lambda j: tf.gather(rows, _reflected(height, j - radius), axis=1)  # noqa: E731
    else:  # gathers of single columns would be slower than the padded copy
        rows = _rows(tf.pad(images, [[0, 0], [0, 0], [radius, radius], [0, 0]], mode="REFLECT"))
        shifted = lambda j: rows[:, :, j * channels:(j + width) * channels]  # noqa: E731
    return sum(kernel[:, j, None, None] * shifted(j) for j in range(2 * radius + 1))


def _reflected(length: int, shift: int) -> np.ndarray:
    """Indices i + shift for i < length, reflected at both ends without repeating the edge (tf.pad's REFLECT)."""
    index = np.abs(np.arange(length) + shift)
    return np.where(index >= length, 2 * (length - 1) - index, index).astype(np.int32)


def _rows(images: tf.Tensor) -> tf.Tensor:
    """[B,H,W,C] -> [B,H,W*C] (see _blur_along)."""
    return tf.reshape(images, [-1, images.shape[1], images.shape[2] * images.shape[3]])
