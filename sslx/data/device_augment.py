"""SimCLR augmentations in JAX, run on the accelerators inside the training loop (`config.augment.on_device`).

The same ops, parameters and `AugmentSpec` as the tf.data version in sslx.data.augment (its docstring describes
them): random resized crop and flip, colour jitter in a random order per example, grayscale, Gaussian blur,
solarize. Given the same parameters (`sample_params` dicts have the same keys and meanings) both give the same
views up to float rounding; only the random number generators differ.

Why on device: where a host's CPU cores cannot make views as fast as its accelerators train on them
(docs/scaling.md, "Host or device augmentation", and sslx-benchmark's feed line decide), while for an
accelerator these ops are a few elementwise passes and gathers per view. The host then only decodes and ships
one uint8 image per example instead of two float32 views: 8x fewer host-to-device bytes at
equal size (4x from the dtype, 2x from the views).

Every op is per example, and example i of the global batch draws from fold_in(key, i): under `make_views`
(a shard_map over the batch axis) each device augments its own rows with no communication, and the views do not
depend on the number of devices.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from sslx.data.augment import AFFINE_OPS, CROP_ATTEMPTS, GREY_WEIGHTS, AugmentSpec, blur_radius
from sslx.parallel import BATCH_AXIS


def sample_params(spec: AugmentSpec, key: jax.Array, indices: jax.Array, height: int,
                  width: int) -> dict[str, jax.Array]:
    """Every random choice for the examples at global positions `indices`: augment.sample_params's keys.

    'boxes' int32 [B,4] (top, left, height, width); boolean [B] 'flip', 'jitter', 'grayscale', 'blur',
    'solarize'; 'factors' [B,3] (1 where no jitter), 'hue' [B] (0 where none), 'order' [B,4], 'sigma' [B].
    """
    return jax.vmap(lambda i: _sample_one(spec, jax.random.fold_in(key, i), height, width))(indices)


# Uniform draws per example, all from one random_bits call: one threefry per example instead of one per op cuts
# the XLA compile time several-fold (~15 s -> ~3 s on a loaded 2-core CPU).
_DRAWS = {"area": CROP_ATTEMPTS, "aspect": CROP_ATTEMPTS, "offset": 2, "flip": 1, "jitter": 1, "amount": 4,
          "order": 4, "grayscale": 1, "blur": 1, "sigma": 1, "solarize": 1}


def _sample_one(spec: AugmentSpec, key: jax.Array, height: int, width: int) -> dict[str, jax.Array]:
    flat = jax.random.uniform(key, [sum(_DRAWS.values())])
    u = dict(zip(_DRAWS, jnp.split(flat, np.cumsum(list(_DRAWS.values()))[:-1])))
    strengths = spec.jitter_strengths()
    jittered = u["jitter"][0] < spec.jitter_prob
    low = jnp.array([max(0.0, 1.0 - strengths[op]) for op in AFFINE_OPS])
    high = jnp.array([1.0 + strengths[op] for op in AFFINE_OPS])
    return {
        "boxes": _sample_box(spec, u, height, width),
        "flip": u["flip"][0] < spec.flip_prob,
        "jitter": jittered,
        "grayscale": u["grayscale"][0] < spec.grayscale_prob,
        "blur": u["blur"][0] < spec.blur_prob,
        "solarize": u["solarize"][0] < spec.solarize_prob,
        "factors": jnp.where(jittered, low + (high - low) * u["amount"][:3], 1.0),
        "hue": jnp.where(jittered, strengths["hue"] * (2.0 * u["amount"][3] - 1.0), 0.0),
        # A random permutation: the ranks of 4 uniform draws.
        "order": jnp.argsort(jnp.argsort(u["order"])).astype(jnp.int32),
        "sigma": spec.blur_sigma_min + (spec.blur_sigma_max - spec.blur_sigma_min) * u["sigma"][0],
    }


def _sample_box(spec: AugmentSpec, u: dict[str, jax.Array], height: int, width: int) -> jax.Array:
    """Inception-style box as augment._sample_boxes: area ~ U[min, max], aspect log-uniform, first fit wins."""
    area = (spec.crop_area_min + (spec.crop_area_max - spec.crop_area_min) * u["area"]) * (height * width)
    log_min, log_max = math.log(spec.aspect_min), math.log(spec.aspect_max)
    aspect = jnp.exp(log_min + (log_max - log_min) * u["aspect"])
    h, w = jnp.round(jnp.sqrt(area / aspect)), jnp.round(jnp.sqrt(area * aspect))
    fraction = h * w / (height * width)  # after rounding, so every accepted box honours the area range
    fits = ((h >= 1) & (w >= 1) & (h <= height) & (w <= width)
            & (fraction >= spec.crop_area_min) & (fraction <= spec.crop_area_max))
    first, found = jnp.argmax(fits), jnp.any(fits)
    side = float(min(height, width))
    size = jnp.where(found, jnp.stack([h[first], w[first]]), side)
    spare = jnp.array([height, width], jnp.float32) - size
    # A fallback box is centred; a sampled one is placed uniformly where it fits.
    offset = jnp.where(found, jnp.floor(u["offset"] * (spare + 1.0)), jnp.floor(spare / 2))
    return jnp.concatenate([jnp.minimum(offset, spare), size]).astype(jnp.int32)


def apply_params(images: jax.Array, spec: AugmentSpec, params: dict[str, jax.Array], out_size: int) -> jax.Array:
    """[B,H,W,3] uint8 (0..255) or float (0..1) images and their params -> [B,S,S,3] float32 views in [0, 1]."""
    return jax.vmap(lambda image, p: _augment_one(image, p, spec, out_size))(images, params)


def augment_batch(key: jax.Array, images: jax.Array, spec: AugmentSpec, out_size: int,
                  first_index: int | jax.Array = 0) -> jax.Array:
    """One view per image; row r draws from fold_in(key, first_index + r), its position in the global batch."""
    indices = first_index + jnp.arange(images.shape[0])
    return apply_params(images, spec, sample_params(spec, key, indices, images.shape[1], images.shape[2]), out_size)


def augment_views(key: jax.Array, images: jax.Array, specs: Sequence[AugmentSpec], sizes: Sequence[int],
                  first_index: int | jax.Array = 0) -> tuple[jax.Array, ...]:
    """[B,H,W,3] uint8 images -> one [B,S,S,3] float32 view in [0, 1] per spec, view v of side sizes[v] drawn from
    the v-th of `len(specs)` keys split from `key`; jit with specs and sizes static."""
    keys = jax.random.split(key, len(specs))
    return tuple(augment_batch(view_key, images, spec, size, first_index)
                 for view_key, spec, size in zip(keys, specs, sizes))


def make_views(specs: Sequence[AugmentSpec], sizes: Sequence[int],
               mesh: Mesh) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """A jitted (key, batch-sharded uint8 images) -> views, each device augmenting its own rows."""
    specs, sizes = tuple(specs), tuple(sizes)

    def local(key, images):
        first_index = jax.lax.axis_index(BATCH_AXIS) * images.shape[0]
        return augment_views(key, images, specs, sizes, first_index)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=P(BATCH_AXIS)))


def _augment_one(image: jax.Array, params: dict[str, jax.Array], spec: AugmentSpec, out_size: int) -> jax.Array:
    view = _crop_and_flip(image, params["boxes"], params["flip"], out_size)
    if image.dtype == jnp.uint8:
        view = view / 255.0
    if spec.grayscale_prob > 0 or (spec.jitter_prob > 0 and any(spec.jitter_strengths().values())):
        view = _color(view, params, spec)
    radius = blur_radius(spec, out_size)  # SimCLR's side // 10, cut at 3 sigma_max as on the host
    if spec.blur_prob > 0 and radius > 0:
        view = _gaussian_blur(view, jnp.where(params["blur"], params["sigma"], 0.0), radius)
    if spec.solarize_prob > 0:
        view = jnp.where(params["solarize"] & (view >= spec.solarize_threshold), 1.0 - view, view)
    return view


def _crop_and_flip(image: jax.Array, box: jax.Array, flip: jax.Array, out_size: int) -> jax.Array:
    """Bilinear resize of the box to [S,S,3] float (input's scale), sampled as tf.image.crop_and_resize does:
    output corners on the centres of the box's first and last pixels. Two gathers of rows then columns, not
    jax.image.scale_and_translate, whose half-pixel mapping and dense weight matrices differ from the host path."""
    top, left, height, width = box.astype(jnp.float32)
    steps = jnp.arange(out_size, dtype=jnp.float32) / max(out_size - 1, 1)
    rows = top + steps * (height - 1.0)
    cols = left + steps * (width - 1.0)
    cols = jnp.where(flip, cols[::-1], cols)
    return _interpolate(_interpolate(image.astype(jnp.float32), rows, axis=0), cols, axis=1)


def _interpolate(x: jax.Array, coords: jax.Array, axis: int) -> jax.Array:
    """Linear interpolation of `x` at fractional indices `coords` (inside the axis) along `axis`."""
    below = jnp.floor(coords)
    fraction = jnp.expand_dims(coords - below, tuple(range(1, x.ndim - axis)))
    below = below.astype(jnp.int32)
    above = jnp.minimum(below + 1, x.shape[axis] - 1)
    low, high = jnp.take(x, below, axis=axis), jnp.take(x, above, axis=axis)
    return low + (high - low) * fraction


def _color(image: jax.Array, params: dict[str, jax.Array], spec: AugmentSpec) -> jax.Array:
    """Colour jitter then grayscale, as at most two affine colour maps around the hue step (augment._color)."""
    with_hue = spec.jitter_prob > 0 and spec.jitter_strengths()["hue"] > 0
    order = params["order"]
    before_hue = order[:3] < order[3] if with_hue else jnp.ones(3, bool)
    grey = params["grayscale"] if spec.grayscale_prob > 0 else jnp.zeros((), bool)
    if not with_hue:
        return _apply_affine(image, *_affine(params["factors"], before_hue, grey, image))
    image = _apply_affine(image, *_affine(params["factors"], before_hue, jnp.zeros((), bool), image))
    image = _shift_hue(image, params["hue"])
    return _apply_affine(image, *_affine(params["factors"], ~before_hue, grey, image))


def _affine(factors: jax.Array, selected: jax.Array, grey: jax.Array,
            image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The selected brightness/contrast/saturation ops, then grey if `grey`, as x -> A x + t (augment._affine
    derives why their order does not matter without clipping in between)."""
    brightness, contrast, saturation = jnp.where(selected, factors, 1.0)
    grey_rows = jnp.tile(jnp.array(GREY_WEIGHTS, jnp.float32), (3, 1))
    sat = saturation * jnp.eye(3) + (1.0 - saturation) * grey_rows
    sat = jnp.where(grey, _matmul(grey_rows, sat), sat)
    offset = (1.0 - contrast) * brightness * _matmul(sat, jnp.mean(image, axis=(0, 1)))
    return brightness * contrast * sat, offset


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    # Broadcast products, not jnp.matmul: TPUs run f32 matmuls in bfloat16 passes by default, which would shift
    # colours by up to ~1/256; elementwise products also fuse with the neighbouring ops.
    return jnp.sum(a[..., None] * b, axis=-2) if b.ndim == 2 else jnp.sum(a * b, axis=-1)


def _apply_affine(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    return jnp.clip(jnp.sum(image[..., None, :] * matrix, axis=-1) + offset, 0.0, 1.0)


def _shift_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotates HSV hue by `delta` turns in RGB via the hexcone formulas (augment._shift_hue)."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.maximum(jnp.maximum(red, green), blue)
    chroma = value - jnp.minimum(jnp.minimum(red, green), blue)
    inverse = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(value == red, (green - blue) * inverse,
                    jnp.where(value == green, (blue - red) * inverse + 2.0, (red - green) * inverse + 4.0))
    hue = hue + 6.0 * delta
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = hue + n
        k = k - 6.0 * jnp.floor(k * (1.0 / 6.0))
        channels.append(value - chroma * jnp.clip(2.0 - jnp.abs(k - 2.0), 0.0, 1.0))
    return jnp.stack(channels, axis=-1)


def _gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur (sigma 0: unchanged), reflect-padded, as a sum of shifted copies (augment's)."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * jnp.square(taps / jnp.maximum(sigma, 1e-3)))
    kernel = jnp.where(sigma > 0, kernel, (taps == 0).astype(jnp.float32))
    kernel = kernel / jnp.sum(kernel)
    height, width = image.shape[0], image.shape[1]
    padded = jnp.pad(image, [(radius, radius), (0, 0), (0, 0)], mode="reflect")
    image = sum(kernel[j] * padded[j:j + height] for j in range(2 * radius + 1))
    padded = jnp.pad(image, [(0, 0), (radius, radius), (0, 0)], mode="reflect")
    image = sum(kernel[j] * padded[:, j:j + width] for j in range(2 * radius + 1))
    return jnp.clip(image, 0.0, 1.0)  # the normalised kernel can sum to 1 + eps
