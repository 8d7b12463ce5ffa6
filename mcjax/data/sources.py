"""Whole data sets in host memory, as uint8 images and int32 labels.

Every loader returns an :class:`InMemoryData`:

* ``train_images`` uint8 ``[N, H, W, C]``, ``train_labels`` int32 ``[N]``;
* ``test_images`` uint8 ``[M, H, W, C]``, ``test_labels`` int32 ``[M]``;
* every label lies in ``[0, num_classes)`` (checked on construction);
* ``mean_image`` float32 ``[H, W, C]``: the per-pixel mean of the *training*
  images on the ``[0, 1]`` scale (``uint8 / 255``), which the augmentations in
  :mod:`mcjax.data.augment` subtract.

Loaders:

* :func:`load_digits` -- scikit-learn's bundled 8x8 digits (no download).
* :func:`load_tfds_cifar` -- CIFAR-10/100 from tensorflow-datasets data prepared
  in ``array_record`` format; reads it without TensorFlow and never downloads.
* :func:`mcjax.data.image_folder.load_image_folder` -- Mini-ImageNet as a folder of
  class folders.

:func:`mcjax.data.registry.load` loads any in-memory data set by name.

Whatever goes wrong with the user's data raises :class:`DataError`, whose message
says what is wrong and how to fix it; a missing data set fails in well under a
second (tfds's offline download retries take minutes and are never started).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DataError",
    "InMemoryData",
    "load_digits",
    "load_tfds_cifar",
    "open_tfds_splits",
    "tfds_fingerprint",
]


_TFDS_CIFAR_NAMES = ("cifar10", "cifar100")


class DataError(Exception):
    """The data is missing or malformed; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryData:
    """A labelled image data set held whole in host memory (see the module docstring).

    ``eq=False``: comparing data sets element-wise is never what a caller wants, and
    identity hashing keeps the cached ``mean_image`` cheap to look up.
    """

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise DataError(
                    f"{self.name}: {split} images must be uint8 [N, H, W, C], "
                    f"got {images.dtype} {images.shape}."
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{self.name}: {split} labels must be int32 [{images.shape[0]}], "
                    f"got {labels.dtype} {labels.shape}."
                )
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(
                    f"{self.name}: {split} labels span [{labels.min()}, {labels.max()}] but "
                    f"must lie in [0, {self.num_classes}); the prepared data does not match "
                    "the data set's number of classes."
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images {self.train_images.shape[1:]} and test images "
                f"{self.test_images.shape[1:]} differ in shape."
            )
        if self.train_images.shape[0] == 0:
            raise DataError(f"{self.name}: the training split is empty.")

    @functools.cached_property
    def mean_image(self) -> np.ndarray:
        """float32 ``[H, W, C]``: per-pixel mean of the training images, ``[0, 1]`` scale."""
        # float64 accumulation: a float32 running sum over 50k images loses digits.
        mean = self.train_images.mean(axis=0, dtype=np.float64) / 255.0
        return mean.astype(np.float32)

    @functools.cached_property
    def fingerprint(self) -> str:
        """``"sha256:<hex>"`` of the data itself: both splits' images and labels, and the
        class count (not the name, which checkpoints record on their own).

        Two loads give the same fingerprint exactly when they give the same arrays, so
        a checkpoint that records it knows the data it was trained on, wherever the data
        was read from (a moved ``data_dir`` keeps it; other files of the same shape, or a
        decoder that reads the same files differently, do not). One pass of sha256 over
        the arrays: about a second for Mini-ImageNet's 1.3 GB.
        """
        digest = hashlib.sha256(f"classes={self.num_classes}".encode())
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return f"sha256:{digest.hexdigest()}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.train_images.shape[1:])


# ----------------------------------------------------------------------------- digits


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> InMemoryData:
    """scikit-learn's bundled digits: 1,797 8x8 grey images, 10 classes, no download.

    Pixel values 0..16 are scaled to uint8 0..255 (``round(v * 255 / 16)``), shape
    ``[N, 8, 8, 1]``. The train/test split is stratified by class and a pure function
    of ``(test_fraction, seed)``; the defaults give 1,437 train / 360 test images.
    """
    from sklearn import datasets as sk_datasets
    from sklearn import model_selection

    digits = sk_datasets.load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = model_selection.train_test_split(
        np.arange(labels.size),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels,
    )
    # Sorted, so that the split's content, not sklearn's shuffle, defines the arrays.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return InMemoryData(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
    )


# ----------------------------------------------------------------------------- tfds


def _tfds_prepare_hint(name: str) -> str:
    return (
        f"prepare it once on a machine with TensorFlow and network access with "
        f"`tfds build {name} --file_format=array_record --data_dir DIR`, "
        f"then copy DIR here and pass `--config.data.data_dir=DIR`"
    )


def open_tfds_splits(
    name: str,
    data_dir: str | None,
    splits: Sequence[str],
    *,
    decoders: Mapping[str, Any] | None = None,
    how_to_prepare: str | None = None,
) -> tuple[Any, dict[str, Sequence[Mapping[str, Any]]]]:
    """Random-access tfds data sources of ``splits``, read without TensorFlow.

    Returns ``(builder, {split: source})``; each source supports ``len``,
    ``source[i]`` and ``source.__getitems__(list_of_i)``, giving dicts of numpy
    features. Never downloads: if the data set is not prepared under ``data_dir``
    (``None``: tfds's default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) in a
    random-access format (``array_record``), raises :class:`DataError` at once, with
    ``how_to_prepare`` (default: the ``tfds build`` command) in the message.
    """
    import tensorflow_datasets as tfds

    if data_dir:
        data_dir = os.path.expanduser(data_dir)
    hint = how_to_prepare or _tfds_prepare_hint(name)
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as err:  # tfds raises many types for a bad name or config
        raise DataError(f"tensorflow-datasets cannot make a builder for {name!r}: {err}") from err
    where = f"data_dir={data_dir!r}" if data_dir else "tfds's default data_dir"
    if not builder.is_prepared():
        raise DataError(
            f"{name} is not prepared under {where} (looked in {builder.data_dir}); "
            f"data sets are never downloaded here: {hint}."
        )
    formats = builder.info.available_file_formats()
    random_access = set(tfds.core.FileFormat.with_random_access())
    if not formats & random_access:
        found = ", ".join(sorted(f.value for f in formats)) or "unknown"
        raise DataError(
            f"{name} under {builder.data_dir} is stored as {found}, which only TensorFlow can "
            f"read; {hint} (a fresh DIR, or delete the old copy)."
        )
    missing = [s for s in splits if s not in builder.info.splits]
    if missing:
        raise DataError(
            f"{name} under {builder.data_dir} lacks the split(s) {missing} "
            f"(it has {sorted(builder.info.splits)}); {hint}."
        )
    sources = {s: builder.as_data_source(split=s, decoders=decoders) for s in splits}
    return builder, sources


def tfds_fingerprint(builder: Any, splits: Sequence[str]) -> str:
    """``"tfds-sha256:<hex>"`` of the prepared files of ``splits`` of a tfds data set.

    For data too large to hash whole (ImageNet: 150 GB): the data set's name and
    version, each split's example count, shard lengths and bytes as tfds recorded
    them, and per data file its name, size, and the sha256 of its first and last
    64 KiB. Another preparation of the data, or another data set, differs in these.
    """
    digest = hashlib.sha256(str(builder.info.full_name).encode())
    for split in splits:
        info = builder.info.splits[split]
        shards = [int(n) for n in info.shard_lengths]
        record = [split, int(info.num_examples), shards, int(info.num_bytes)]
        digest.update(json.dumps(record).encode())
        for path in info.filepaths:
            path = os.fspath(path)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(1 << 16)
                f.seek(max(0, size - (1 << 16)))
                tail = f.read(1 << 16)
            sample = hashlib.sha256(head + tail).hexdigest()
            digest.update(f"{os.path.basename(path)}:{size}:{sample}".encode())
    return f"tfds-sha256:{digest.hexdigest()}"


def _read_all(source: Sequence[Mapping[str, Any]], label_key: str, what: str):
    """All ``(images uint8 [N,H,W,C], labels int32 [N])`` of a tfds data source."""
    n = len(source)
    images: np.ndarray | None = None
    labels = np.empty((n,), np.int32)
    chunk = 1000  # bounds the per-call list of decoded example dicts
    for start in range(0, n, chunk):
        examples = source.__getitems__(list(range(start, min(start + chunk, n))))
        for offset, example in enumerate(examples):
            image = np.asarray(example["image"])
            if images is None:
                images = np.empty((n, *image.shape), np.uint8)
            if image.shape != images.shape[1:]:
                raise DataError(
                    f"{what}: example {start + offset} has image shape {image.shape}, "
                    f"expected {images.shape[1:]}; the prepared data is inconsistent."
                )
            images[start + offset] = image
            labels[start + offset] = int(example[label_key])
    if images is None:
        raise DataError(f"{what} is empty; prepare the data set again.")
    return images, labels


def load_tfds_cifar(name: str, *, data_dir: str | None) -> InMemoryData:
    """CIFAR-10 or CIFAR-100 (``name``) from tensorflow-datasets ``array_record`` data.

    Reads the ``train`` and ``test`` splits without TensorFlow and never downloads;
    CIFAR-100 uses the fine ``label`` (100 classes). Images uint8 ``[N, 32, 32, 3]``,
    in the prepared files' order. Raises :class:`DataError` at once if the data is
    not prepared under ``data_dir`` (with the ``tfds build`` command that prepares it).
    """
    if name not in _TFDS_CIFAR_NAMES:
        raise DataError(f"unknown CIFAR data set {name!r}; expected one of {_TFDS_CIFAR_NAMES}.")
    builder, sources = open_tfds_splits(name, data_dir, ("train", "test"))
    num_classes = int(builder.info.features["label"].num_classes)
    train_images, train_labels = _read_all(sources["train"], "label", f"{name} train")
    test_images, test_labels = _read_all(sources["test"], "label", f"{name} test")
    return InMemoryData(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
    )
