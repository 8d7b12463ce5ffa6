"""The input of a data set by name: the top rung of mcjax.data (see :mod:`mcjax.data.types`).

:func:`make_input` is what the training program calls; whichever class it returns, the
program uses only the :class:`~mcjax.data.types.Input` interface.
"""

from __future__ import annotations

import jax

from mcjax.data import registry
from mcjax.data.in_memory import InMemoryInput
from mcjax.data.streaming import StreamingInput
from mcjax.data.types import Input

__all__ = ["make_input"]


def make_input(
    name: str,
    *,
    data_dir: str | None,
    image_size: int,
    seed: int,
    batch_size: int,
    eval_batch_size: int,
    key: jax.Array,
    num_classes: int | None = None,
    options: dict | None = None,
) -> Input:
    """The input of data set ``name`` (an entry of :mod:`mcjax.data.registry`).

    A streamed data set (ImageNet) gives a :class:`~mcjax.data.streaming.StreamingInput`;
    any other is loaded whole (:func:`mcjax.data.registry.load`) into an
    :class:`~mcjax.data.in_memory.InMemoryInput`.

    Args:
      name, data_dir: which data and where (see :func:`mcjax.data.registry.load`).
      image_size: the network's input side (the crop, for data sets that crop).
      seed: decides the batch order and, with ``key``, the augmentation.
      batch_size, eval_batch_size: global batch sizes.
      key: the augmentation key (in-memory data sets).
      num_classes: if given, must be the data's class count (the head is sized from it).
      options: loader options (:func:`mcjax.data.registry.load`), e.g. Mini-ImageNet's split.

    Raises:
      mcjax.data.sources.DataError: the data is missing or malformed.
    """
    batches = dict(seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size)
    spec = registry.get(name)
    if spec.streamed:
        return StreamingInput(name, data_dir=data_dir, image_size=image_size, **batches)
    data = registry.load(name, data_dir=data_dir, num_classes=num_classes, **(options or {}))
    return InMemoryInput(data, key=key, image_size=image_size, **batches)
