"""A data set held whole on the device: the :class:`~mcjax.data.types.Input` of digits,
CIFAR and image folders (Mini-ImageNet).

The data (:class:`mcjax.data.sources.InMemoryData`) lives on the device as uint8; each
step gathers its batch and augments it there (:mod:`mcjax.data.augment`), with keys
that are a pure function of ``(seed, step, index in the global batch)``, so a resumed
run sees exactly the same batches. ImageNet streams from host threads instead
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

from mcjax.data import augment, batch_order, registry, sources

__all__ = ["InMemoryInput"]

# The in-memory views of mcjax.data.registry, by name.
_TRAIN_VIEWS = {
    "digits": lambda keys, images, mean, crop: augment.digits_train(keys, images, mean),
    "cifar": lambda keys, images, mean, crop: augment.cifar_train(keys, images, mean),
    "crop_flip": lambda keys, images, mean, crop: augment.crop_flip_train(
        keys, images, mean, crop=crop
    ),
}
_EVAL_VIEWS = {
    "plain": lambda images, mean, crop: augment.plain_eval(images, mean),
    "center_crop": lambda images, mean, crop: augment.center_crop_eval(images, mean, crop=crop),
}


@functools.partial(jax.jit, static_argnames=("kind", "crop"))
def _train_batch(images, labels, indices, positions, step, key, mean, *, kind, crop):
    keys = augment.example_keys(key, step, positions)
    return _TRAIN_VIEWS[kind](keys, images[indices], mean, crop), labels[indices]


@functools.partial(jax.jit, static_argnames=("kind", "crop"))
def _eval_batch(images, labels, indices, mean, *, kind, crop):
    return _EVAL_VIEWS[kind](images[indices], mean, crop), labels[indices]


_ALL = slice(None)


class InMemoryInput:
    """A whole data set on the device; batches are gathered and augmented there.

    Serves :class:`mcjax.data.types.Input` (its members are documented there).
    ``fingerprint``: what data this is (:attr:`mcjax.data.sources.InMemoryData.fingerprint`).
    """

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
        spec = registry.get(data.name)
        self.spec = spec  # the data set's entry of mcjax.data.registry
        self.name = data.name
        self.num_classes = data.num_classes
        self.num_train = int(data.train_images.shape[0])
        self.num_test = int(data.test_images.shape[0])
        self.seed, self.batch_size, self.eval_batch_size = seed, batch_size, eval_batch_size
        self._train_kind, self._eval_kind = spec.train_view, spec.eval_view
        self.crop = image_size if spec.crops else None
        if not spec.crops and data.train_images.shape[1] != image_size:
            raise sources.DataError(
                f"config.data.image_size is {image_size} but {data.name} images are "
                f"{data.train_images.shape[1]}x{data.train_images.shape[2]}"
            )
        self._key = key
        self.fingerprint: str = data.fingerprint
        self.mean_image = np.asarray(data.mean_image, np.float32)
        self.std = np.float32(1.0)
        self._mean = jnp.asarray(self.mean_image)
        self._train = (jnp.asarray(data.train_images), jnp.asarray(data.train_labels))
        self._test = (jnp.asarray(data.test_images), jnp.asarray(data.test_labels))

    def train_batch(self, step: int, rows: slice = _ALL) -> tuple[jax.Array, jax.Array]:
        """Augmented ``(images float32 [B,H,W,C], labels int32 [B])``: the ``rows`` of
        global batch ``step`` (default all ``batch_size``)."""
        indices, positions = batch_order.train_rows(
            self.seed, step, self.num_train, self.batch_size, rows
        )
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
        for indices, valid in batch_order.eval_batches(self.num_test, self.eval_batch_size):
            images, labels = _eval_batch(
                *self._test,
                jnp.asarray(indices[rows]),
                self._mean,
                kind=self._eval_kind,
                crop=self.crop,
            )
            yield images, labels, jnp.asarray(valid[rows])
