"""The data sets mcjax knows: one table from names to what they are and how they are read.

Read by validation, the inputs, training and outputs. Adding a data set is one
:class:`~mcjax.data.types.Dataset` entry in :data:`DATASETS` plus its loader (a function
returning :class:`mcjax.data.sources.InMemoryData`, or a streaming source like ImageNet's).
Nothing else in the package compares data-set names. :func:`load` reads an in-memory
data set by name.

The preprocessing names (``train_view``, ``eval_view``) are those of
:mod:`mcjax.data.augment` (in memory) and :mod:`mcjax.data.streaming` (ImageNet):

* ``digits``: shift by up to 1 pixel, no flip (digits are not mirror-symmetric);
* ``cifar``: pad 4, random 32x32 crop, random flip (paper appendix E.1);
* ``crop_flip``: random ``image_size`` crop + flip of the stored image (E.3);
* ``plain``: the whole image; ``center_crop``: the central ``image_size`` crop;
* ``inception_crop`` / ``resize_center_crop``: ResNeXt's ImageNet views (E.2).

The protocol per data set is docs/design.md §6.
"""

from __future__ import annotations

from typing import Any

from mcjax.data import image_folder, sources
from mcjax.data.sources import DataError, InMemoryData
from mcjax.data.types import Dataset

__all__ = ["DATASETS", "get", "load"]


# The loaders look their reader up when called (``sources.load_digits``, not the function
# itself in the table), so that a reader replaced on its module is the one used.
def _load_digits(*, data_dir=None, num_classes=None, **options):
    return sources.load_digits(**options)


def _load_cifar(name: str):
    def load(*, data_dir=None, num_classes=None, **options):
        return sources.load_tfds_cifar(name, data_dir=data_dir, **options)

    return load


def _load_mini_imagenet(*, data_dir=None, num_classes=None, **options):
    spec = DATASETS["mini_imagenet"]
    train_per_class, test_per_class = spec.split
    return image_folder.load_image_folder(
        data_dir,
        image_size=int(options.pop("folder_image_size", spec.stored_size)),
        train_per_class=int(options.pop("train_per_class", train_per_class)),
        test_per_class=int(options.pop("test_per_class", test_per_class)),
        expected_classes=num_classes,
        **options,
    )


DATASETS: dict[str, Dataset] = {
    spec.name: spec
    for spec in (
        Dataset(
            "digits",
            channels=1,
            num_classes=10,
            stored_size=8,
            crops=False,
            train_view="digits",
            eval_view="plain",
            load=_load_digits,
        ),
        Dataset(
            "cifar10",
            channels=3,
            num_classes=10,
            stored_size=32,
            crops=False,
            train_view="cifar",
            eval_view="plain",
            load=_load_cifar("cifar10"),
        ),
        Dataset(
            "cifar100",
            channels=3,
            num_classes=100,
            stored_size=32,
            crops=False,
            train_view="cifar",
            eval_view="plain",
            load=_load_cifar("cifar100"),
        ),
        # 100 classes of 600 images resized to 84x84, 500/100 per class (appendix C, E.3).
        Dataset(
            "mini_imagenet",
            channels=3,
            num_classes=None,
            stored_size=84,
            crops=True,
            train_view="crop_flip",
            eval_view="center_crop",
            needs_data_dir=True,
            split=(500, 100),
            load=_load_mini_imagenet,
        ),
        Dataset(
            "imagenet",
            channels=3,
            num_classes=1000,
            stored_size=None,
            crops=True,
            train_view="inception_crop",
            eval_view="resize_center_crop",
            streamed=True,
            top5=True,
        ),
    )
}


def get(name: str) -> Dataset:
    """The :class:`Dataset` called ``name``; a ``ValueError`` naming the choices otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        choices = ", ".join(DATASETS)
        raise ValueError(f"unknown data set {name!r}; choose one of {choices}") from None


def load(
    name: str, *, data_dir: str | None = None, num_classes: int | None = None, **options: Any
) -> InMemoryData:
    """The in-memory data set called ``name`` (an entry of :data:`DATASETS`).

    Args:
      name: digits, cifar10, cifar100 or mini_imagenet (ImageNet streams instead: see
        :class:`mcjax.data.streaming.ImageNetInput`).
      data_dir: the tfds data_dir, or the image folder for mini_imagenet (``None``/``""``:
        the default, where there is one).
      num_classes: if given, must be the data's class count (the head is sized from it).
      **options: loader options, e.g. for mini_imagenet ``folder_image_size`` (84),
        ``train_per_class`` (500), ``test_per_class`` (100).

    Raises:
      DataError: unknown name, missing or malformed data, or a class-count mismatch.
    """
    try:
        spec = get(name)
    except ValueError as error:
        raise DataError(str(error)) from None
    if spec.streamed:
        raise DataError(
            f"{name} is streamed, not loaded into memory: use mcjax.data.streaming.ImageNetInput."
        )
    if spec.needs_data_dir and not data_dir:
        raise DataError(f"{name} needs `--config.data.data_dir=` the folder of its data.")
    data = spec.load(data_dir=data_dir or None, num_classes=num_classes, **options)
    if num_classes is not None and int(num_classes) != data.num_classes:
        # The head is sized from the config: a mismatch would train silently wrong.
        raise DataError(
            f"config.data.num_classes={num_classes} but {name} has {data.num_classes} classes; "
            f"set `--config.data.num_classes={data.num_classes}`."
        )
    return data
