"""On-device augmentation: pure, jit-able JAX (the batch order is :mod:`mcjax.data.batch_order`).

Images come in as uint8 ``[N, H, W, C]`` and leave as float32, scaled to ``[0, 1]``
and with the per-pixel training mean (float32 ``[H, W, C]``, same scale)
subtracted. The mean is subtracted at each pixel's *source* position, before any
crop (so every output pixel is exactly zero-mean over the training set), and
padding is zero in that normalised space, i.e. padded pixels take the mean's
value -- the order of fb.resnet.torch's CIFAR pipeline, which ResNeXt and
MaskConnect build on.

Guarantees:

* All randomness comes from explicit keys. :func:`example_keys` gives one key per
  example, ``fold_in(fold_in(key, step), index_in_global_batch)``, so an example's
  augmentation depends only on ``(key, step, its index in the global batch)``:
  never on the batch it is computed in, its position there, or the device that
  holds it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "center_crop_eval",
    "cifar_train",
    "crop_flip_train",
    "digits_train",
    "example_keys",
    "normalize",
    "plain_eval",
    "random_crop_flip_params",
]


def example_keys(key: jax.Array, step: int | jax.Array, global_indices: jax.Array) -> jax.Array:
    """One PRNG key per example: ``fold_in(fold_in(key, step), global_indices[i])``.

    ``global_indices``: int ``[B]``, each example's position in the *global* batch of
    this step (a device holding examples 64..127 passes ``arange(64, 128)``).
    Returns keys ``[B]`` (typed keys) or ``[B, 2]`` (raw uint32 keys), like ``key``.
    """
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda index: jax.random.fold_in(step_key, index))(global_indices)


def normalize(images_uint8: jax.Array, mean_image: jax.Array) -> jax.Array:
    """float32 ``images / 255 - mean_image`` (mean float32 ``[H, W, C]``, ``[0, 1]`` scale)."""
    return images_uint8.astype(jnp.float32) / 255.0 - jnp.asarray(mean_image, jnp.float32)


def random_crop_flip_params(
    keys: jax.Array, *, max_offset: tuple[int, int], flip: bool
) -> tuple[jax.Array, jax.Array]:
    """The random draws behind every training augmentation here, one per key.

    Returns ``offsets`` int32 ``[N, 2]`` (top, left), each uniform in
    ``[0, max_offset]``, and ``flips`` bool ``[N]`` (horizontal flip with probability
    1/2; all False when ``flip`` is False). Public so that tests and other pipelines
    can reproduce an augmentation exactly.
    """

    def draw(key):
        offset_key, flip_key = jax.random.split(key)
        offsets = jax.random.randint(
            offset_key, (2,), 0, jnp.array(max_offset, jnp.int32) + 1, dtype=jnp.int32
        )
        flipped = jax.random.bernoulli(flip_key) if flip else jnp.array(False)
        return offsets, flipped

    return jax.vmap(draw)(keys)


def _crop_flip(
    keys: jax.Array, images: jax.Array, *, pad: int, size: tuple[int, int], flip: bool
) -> jax.Array:
    """Random ``size`` crops (+ optional flips) of float images zero-padded by ``pad``."""
    if pad:
        images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    height, width, channels = images.shape[1:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {size} is larger than the (padded) image {(height, width)}")
    offsets, flips = random_crop_flip_params(
        keys, max_offset=(height - crop_h, width - crop_w), flip=flip
    )

    def one(image, offset, flipped):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (crop_h, crop_w, channels))
        return jnp.where(flipped, crop[:, ::-1], crop)

    return jax.vmap(one)(images, offsets, flips)


def cifar_train(keys: jax.Array, images_uint8: jax.Array, mean_image: jax.Array) -> jax.Array:
    """CIFAR training view: pad 4, random crop back to ``H x W``, random horizontal flip.

    ``keys`` from :func:`example_keys` ``[N]``, images uint8 ``[N, H, W, C]``, mean float32
    ``[H, W, C]`` -> float32 ``[N, H, W, C]``, mean-subtracted (padding = mean value).
    """
    height, width = images_uint8.shape[1:3]
    x = normalize(images_uint8, mean_image)
    return _crop_flip(keys, x, pad=4, size=(height, width), flip=True)


def digits_train(keys: jax.Array, images_uint8: jax.Array, mean_image: jax.Array) -> jax.Array:
    """8x8 digits training view: random shift by up to 1 pixel (pad 1 + crop), no flip.

    Digits are not mirror-invariant (2 vs. 5 shapes, 3 vs. E), hence no flip.
    float32 ``[N, H, W, C]``, mean-subtracted.
    """
    height, width = images_uint8.shape[1:3]
    x = normalize(images_uint8, mean_image)
    return _crop_flip(keys, x, pad=1, size=(height, width), flip=False)


def crop_flip_train(
    keys: jax.Array, images_uint8: jax.Array, mean_image: jax.Array, *, crop: int
) -> jax.Array:
    """Mini-ImageNet training view: random ``crop x crop`` window + random horizontal flip.

    Images uint8 ``[N, H, W, C]`` (84x84), mean float32 ``[H, W, C]`` of the full-size
    images -> float32 ``[N, crop, crop, C]``. The mean is subtracted before cropping,
    i.e. at each pixel's source position (for the centre crop of
    :func:`center_crop_eval` this equals subtracting the centrally cropped mean).
    """
    x = normalize(images_uint8, mean_image)
    return _crop_flip(keys, x, pad=0, size=(crop, crop), flip=True)


def center_crop_eval(images_uint8: jax.Array, mean_image: jax.Array, *, crop: int) -> jax.Array:
    """Test view: the central ``crop x crop`` window, mean-subtracted, float32."""
    height, width = images_uint8.shape[1:3]
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the image {(height, width)}")
    top, left = (height - crop) // 2, (width - crop) // 2
    x = normalize(images_uint8, mean_image)
    return x[:, top : top + crop, left : left + crop]


def plain_eval(images_uint8: jax.Array, mean_image: jax.Array) -> jax.Array:
    """CIFAR/digits test view: the whole image, ``/255 - mean``, float32 ``[N, H, W, C]``."""
    return normalize(images_uint8, mean_image)
