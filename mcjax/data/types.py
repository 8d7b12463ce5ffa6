"""The bottom rung of mcjax.data: what a data set is (:class:`Dataset`) and what every
training input serves (:class:`Input`). The ladder is in :mod:`mcjax.data`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import jax
    import numpy as np

__all__ = ["Dataset", "Input"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What the program needs to know about one data set.

    Attributes:
      name: the ``config.data.name`` that selects it.
      channels: image channels (1 grayscale, 3 RGB).
      num_classes: classes of the data set; ``None`` when the data decides (an image
        folder holds any number of class subfolders).
      stored_size: side of the stored (square) images that the network sees whole when
        ``crops`` is False; for folders, the side the images are resized to when read;
        ``None`` when any size is stored (ImageNet's JPEGs).
      crops: whether the network sees an ``image_size`` crop (any ``image_size`` up to
        ``stored_size`` is then valid) rather than the stored image.
      train_view / eval_view: preprocessing of a training / test example (the names are
        listed in :mod:`mcjax.data.registry`).
      streamed: decoded by host threads batch by batch (ImageNet) rather than held on
        the device whole.
      top5: whether top-5 accuracy is reported (the paper's ImageNet table).
      needs_data_dir: whether ``config.data.data_dir`` must be given.
      split: for folders, ``(train_per_class, test_per_class)`` (Mini-ImageNet: 500/100).
      load: the in-memory loader, ``load(data_dir=..., num_classes=..., **options)``
        returning a :class:`mcjax.data.sources.InMemoryData`; ``None`` for a streamed
        data set.
    """

    name: str
    channels: int
    num_classes: int | None
    stored_size: int | None
    crops: bool
    train_view: str
    eval_view: str
    streamed: bool = False
    top5: bool = False
    needs_data_dir: bool = False
    split: tuple[int, int] | None = None
    load: Callable[..., Any] | None = None

    def image_size_problem(self, image_size: int) -> str | None:
        """Why ``image_size`` cannot be this data set's network input, or ``None``."""
        if self.crops:
            if self.stored_size is not None and image_size > self.stored_size:
                return f"at most {self.stored_size} (the crop is taken from the stored images)"
            return None
        if image_size != self.stored_size:
            size = self.stored_size
            return f"{size} for {self.name} (its images are {size}x{size})"
        return None


@runtime_checkable
class Input(Protocol):
    """The batches of one data set for training and exact evaluation, and what they are.

    Served by :class:`mcjax.data.in_memory.InMemoryInput` (digits, CIFAR, image folders)
    and :class:`mcjax.data.streaming.StreamingInput` (ImageNet); made by
    :func:`mcjax.data.inputs.make_input`. The training program uses nothing else of an
    input.

    Guarantees: the batch of a step is a pure function of ``(seed, step)`` and the rows
    asked for (:mod:`mcjax.data.batch_order`); an example's augmentation depends only on
    ``(seed, step, its position in the global batch)``, never on which process or device
    holds it, so a resumed run sees exactly the same batches.

    Attributes:
      name: the data set's name (a key of :data:`mcjax.data.registry.DATASETS`).
      spec: its :class:`Dataset` entry.
      num_classes: classes of the data (the head's width).
      num_train, num_test: examples of the training and the test split.
      batch_size, eval_batch_size: global batch sizes of training and evaluation.
      fingerprint: what data this is, recorded by checkpoints so that a resume on other
        data is refused: ``"sha256:<hex>"`` of the arrays
        (:attr:`mcjax.data.sources.InMemoryData.fingerprint`) or ``"tfds-sha256:<hex>"``
        of the prepared files (:func:`mcjax.data.sources.tfds_fingerprint`).
      mean_image, std: the normalisation the batches carry, ``(x / 255 - mean) / std``,
        for the exported model: float32 ``[H, W, C]`` per pixel and a scalar 1, or
        float32 ``[C]`` per channel for both.
      crop: the side of the central crop the exported model takes of a stored image, or
        ``None`` when the network sees the image whole.
    """

    name: str
    spec: Dataset
    num_classes: int
    num_train: int
    num_test: int
    batch_size: int
    eval_batch_size: int
    fingerprint: str
    mean_image: np.ndarray
    std: np.ndarray | np.float32
    crop: int | None

    def train_batch(self, step: int, rows: slice = ...) -> tuple[jax.Array, jax.Array]:
        """``(images float32 [B, H, W, C], labels int32 [B])``: the ``rows`` of the
        augmented global batch of ``step`` (default all ``batch_size`` rows)."""
        ...

    def eval_batches(self, rows: slice = ...) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """``(images float32 [B, H, W, C], labels int32 [B], valid bool [B])``: the
        ``rows`` of padded batches of ``eval_batch_size`` that cover every test example
        exactly once (padding rows are marked invalid)."""
        ...
