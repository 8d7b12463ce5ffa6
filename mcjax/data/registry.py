"""The data sets mcjax knows: one table, read by validation, input, training and outputs.

Adding a data set is one :class:`Dataset` entry in :data:`DATASETS` plus its loader
(a function returning :class:`mcjax.data.sources.InMemoryData`, or a streaming source
like ImageNet's). Nothing else in the package compares data-set names.

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

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["DATASETS", "Dataset", "get"]


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
      train_view / eval_view: preprocessing of a training / test example (module doc).
      streamed: decoded by host threads batch by batch (ImageNet) rather than held on
        the device whole.
      top5: whether top-5 accuracy is reported (the paper's ImageNet table).
      needs_data_dir: whether ``config.data.data_dir`` must be given.
      split: for folders, ``(train_per_class, test_per_class)`` (Mini-ImageNet: 500/100).
      load: the in-memory loader, ``load(data_dir=..., num_classes=..., **options)``;
        ``None`` for a streamed data set.
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


def _load_digits(*, data_dir=None, num_classes=None, **options):
    from mcjax.data import sources

    return sources.load_digits(**options)


def _load_cifar(name: str):
    def load(*, data_dir=None, num_classes=None, **options):
        from mcjax.data import sources

        return sources.load_tfds_cifar(name, data_dir=data_dir, **options)

    return load


def _load_mini_imagenet(*, data_dir=None, num_classes=None, **options):
    from mcjax.data import image_folder

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
