"""Tiny data sets written by the tests themselves: tfds array_record (no TensorFlow), image folders.

The tfds builders are the real ones with only the example source replaced, so the
files, ``dataset_info.json`` and versions are exactly what ``tfds build`` makes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def cifar_pixels(i: int) -> np.ndarray:
    """A distinct 32x32x3 image per example index, so decoding can be checked exactly."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def prepare_cifar(data_dir, num_train: int, num_test: int, *, name: str = "cifar100") -> None:
    """``cifar10`` or ``cifar100`` with ``num_train``/``num_test`` examples; label ``i % classes``.

    Test examples are numbered from 1000, so image ``i`` is ``cifar_pixels(i)``.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    base = {"cifar10": cifar.Cifar10, "cifar100": cifar.Cifar100}[name]
    classes = 10 if name == "cifar10" else 100

    class TinyCifar(base, skip_registration=True):
        def _split_generators(self, dl_manager):
            return {"train": self._examples(0, num_train), "test": self._examples(1000, num_test)}

        def _examples(self, first, count):
            for i in range(first, first + count):
                example = {"image": Image.fromarray(cifar_pixels(i)), "label": i % classes}
                if name == "cifar100":
                    example.update(id=f"x{i}", coarse_label=i % 20)
                else:
                    example.update(id=f"x{i}")
                yield i, example

    TinyCifar.name = name
    tfds.disable_progress_bar()
    TinyCifar(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def prepare_imagenet(root, train_examples, validation_examples) -> None:
    """``imagenet2012`` in array_record format: the real builder, given example sources."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as real

    class TinyImagenet2012(real.Builder, skip_registration=True):
        name = "imagenet2012"
        pkg_dir_path = real.Builder._get_pkg_dir_path()  # the real metadata files

        def _split_generators(self, dl_manager):
            return {"train": train_examples(), "validation": validation_examples()}

    tfds.disable_progress_bar()
    TinyImagenet2012(data_dir=str(root), file_format="array_record").download_and_prepare()


def make_image_folder(root, *, num_classes: int, per_class: int, size=(12, 10), colour=None):
    """Class folders ``n000, n001, ...`` of PNG images (uniform colour by default)."""
    colour = colour or (lambda c, f: (c * 40 % 256, f * 30 % 256, 200))
    for c in range(num_classes):
        class_dir = root / f"n{c:03d}"
        class_dir.mkdir(parents=True)
        for f in range(per_class):
            Image.new("RGB", size, colour(c, f)).save(class_dir / f"img_{f:02d}.png")
