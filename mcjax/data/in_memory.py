"""Batches for training and exact evaluation, from the data set a config names.

Small data sets (digits, CIFAR, Mini-ImageNet) live on the device whole, as
uint8; each step gathers its batch and augments it there, with keys that are a
pure function of ``(seed, step, index in the global batch)``, so a resumed run
sees exactly the same batches. ImageNet streams from host threads
(:mod:`mcjax.data.streaming`) with the same guarantee.

With several processes each one asks only for its ``rows`` of every global batch
(:func:`mcjax.parallel.process_rows`); an example's augmentation depends on its
position in the global batch, never on which process or device holds it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mcjax.data import augment, sources

__all__ = ["InMemoryInput", "make_input"]

# (train augmentation, test preprocessing, whether the network sees a crop) per
# data set (docs/design.md §6); Mini-ImageNet crops config.data.image_size (64) out of 84.
_TRANSFORMS = {
    "digits": ("digits", "plain", False),
    "cifar10": ("cifar", "plain", False),
    "cifar100": ("cifar", "plain", False),
    "mini_imagenet": ("crop_flip", "center_crop", True),
}


def _train_transform(kind, keys, images, mean, crop):
    if kind == "digits":
        return augment.digits_train(keys, images, mean)
    if kind == "cifar":
        return augment.cifar_train(keys, images, mean)
    return augment.crop_flip_train(keys, images, mean, crop=crop)


def _eval_transform(kind, images, mean, crop):
    if kind == "plain":
        return augment.plain_eval(images, mean)
    return augment.center_crop_eval(images, mean, crop=crop)


@functools.partial(jax.jit, static_argnames=("kind", "crop"))
def _train_batch(images, labels, indices, positions, step, key, mean, *, kind, crop):
    keys = augment.example_keys(key, step, positions)
    return _train_transform(kind, keys, images[indices], mean, crop), labels[indices]


@functools.partial(jax.jit, static_argnames=("kind", "crop"))
def _eval_batch(images, labels, indices, mean, *, kind, crop):
    return _eval_transform(kind, images[indices], mean, crop), labels[indices]


_ALL = slice(None)


def _train_rows(data, step: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Example indices and global-batch positions of the ``rows`` of batch ``step``."""
    indices = augment.train_batch_indices(data.seed, step, data.num_train, data.batch_size)
    return indices[rows], np.arange(data.batch_size)[rows]


class InMemoryInput:
    """A whole data set on the device; batches are gathered and augmented there."""

    def __init__(
        self,
        data: sources.InMemoryData,
        *,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        key: jax.Array,
        image_size: int,
    ):
        if data.name not in _TRANSFORMS:
            raise ValueError(f"no transforms for data set {data.name!r}")
        self.name = data.name
        self.num_classes = data.num_classes
        self.num_train = int(data.train_images.shape[0])
        self.num_test = int(data.test_images.shape[0])
        self.seed, self.batch_size, self.eval_batch_size = seed, batch_size, eval_batch_size
        self._train_kind, self._eval_kind, crops = _TRANSFORMS[data.name]
        self.crop = image_size if crops else None
        if not crops and data.train_images.shape[1] != image_size:
            raise sources.DataError(
                f"config.data.image_size is {image_size} but {data.name} images are "
                f"{data.train_images.shape[1]}x{data.train_images.shape[2]}"
            )
        self._key = key
        self.mean_image = np.asarray(data.mean_image, np.float32)
        self.std = np.float32(1.0)
        self._mean = jnp.asarray(self.mean_image)
        self._train = (jnp.asarray(data.train_images), jnp.asarray(data.train_labels))
        self._test = (jnp.asarray(data.test_images), jnp.asarray(data.test_labels))

    def train_batch(self, step: int, rows: slice = _ALL) -> tuple[jax.Array, jax.Array]:
        """Augmented ``(images float32 [B,H,W,C], labels int32 [B])``: the ``rows`` of
        global batch ``step`` (default all ``batch_size``)."""
        indices, positions = _train_rows(self, step, rows)
        return _train_batch(
            *self._train,
            jnp.asarray(indices),
            jnp.asarray(positions),
            jnp.int32(step),
            self._key,
            self._mean,
            kind=self._train_kind,
            crop=self.crop,
        )

    def eval_batches(self, rows: slice = _ALL) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """``(images, labels, valid)``: the ``rows`` of padded batches of
        ``eval_batch_size`` that cover every test example exactly once."""
        for indices, valid in augment.eval_batches(self.num_test, self.eval_batch_size):
            images, labels = _eval_batch(
                *self._test,
                jnp.asarray(indices[rows]),
                self._mean,
                kind=self._eval_kind,
                crop=self.crop,
            )
            yield images, labels, jnp.asarray(valid[rows])


class StreamingInput:
    """ImageNet through host threads (see :mod:`mcjax.data.streaming`)."""

    def __init__(self, config, *, seed: int, batch_size: int, eval_batch_size: int):
        from mcjax import imagenet_input

        self.name = "imagenet"
        self.source = imagenet_input.ImageNetInput(
            data_dir=config.data.data_dir or None,
            image_size=int(config.data.image_size),
            seed=seed,
            global_batch_size=batch_size,
        )
        self.num_classes = 1000
        self.num_train = self.source.num_train
        self.num_test = self.source.num_test
        self.seed, self.batch_size, self.eval_batch_size = seed, batch_size, eval_batch_size
        # Per-channel normalisation for the exported model (images pre-cropped to 224).
        self.mean_image = imagenet_input.IMAGENET_MEAN
        self.std = imagenet_input.IMAGENET_STD
        self.crop = None

    def train_batch(self, step: int, rows: slice = _ALL):
        indices, positions = _train_rows(self, step, rows)
        images, labels = self.source.train_batch(step, indices, positions=positions)
        return jnp.asarray(images), jnp.asarray(labels)

    def eval_batches(self, rows: slice = _ALL):
        for images, labels, valid in self.source.eval_batches(self.eval_batch_size, rows=rows):
            yield jnp.asarray(images), jnp.asarray(labels), jnp.asarray(valid)


def make_input(config, *, key: jax.Array):
    """The input of ``config.data`` (raises :class:`mcjax.data.sources.DataError` if missing)."""
    kwargs = dict(
        seed=int(config.seed),
        batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
    )
    if config.data.name == "imagenet":
        return StreamingInput(config, **kwargs)
    return InMemoryInput(
        sources.load(config.data), key=key, image_size=int(config.data.image_size), **kwargs
    )
