"""Mini-ImageNet (or any labelled image set) from a folder of class subfolders.

Classes are the subfolders in sorted order; each class's images, sorted by file name,
are split into the first ``train_per_class`` for training and the next
``test_per_class`` for testing (Mini-ImageNet: 500/100 of 600), resized to
``image_size`` (84) when read. Every PIL mode is read as RGB or refused with the file
named (:mod:`mcjax.data.decode`: 16-bit and [0, 1] floating-point images are scaled to
8 bits, not clipped; 32-bit integer images are refused).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import numpy as np

from mcjax.data import decode
from mcjax.data.sources import DataError, InMemoryData

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

# File name endings (lower case) that :func:`load_image_folder` reads as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _list_images(class_dir: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(class_dir)
        if not f.startswith(".")
        and f.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(class_dir, f))
    )


def _read_resized(path: str, image_size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]``: the whole image, RGB, resized (aspect not kept) to ``S x S``.

    Decoded by :func:`mcjax.data.decode.rgb_image` (every PIL mode handled or refused,
    memory bounded across the loading threads).
    """
    from PIL import Image

    try:
        with decode.rgb_image(path) as image:
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except decode.ImageRefused as err:
        raise DataError(
            f"cannot read image {path}: it is {err}; replace or delete the file."
        ) from err
    # Decoding foreign files fails in many ways (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...); every one means the same to the user.
    except Exception as err:
        raise DataError(
            f"cannot read image {path} ({type(err).__name__}: {err}); replace or delete the file."
        ) from err


def load_image_folder(
    root: str,
    *,
    image_size: int = 84,
    train_per_class: int = 500,
    test_per_class: int = 100,
    expected_classes: int | None = 100,
) -> InMemoryData:
    """Mini-ImageNet from a folder of class folders of images (jpg, png, ...).

    * Classes: the non-hidden subfolders of ``root``, sorted by name; label = position.
    * Split: per class, image files sorted by name; the first ``train_per_class`` go
      to train, the next ``test_per_class`` to test, any further ones are unused.
    * Images: converted to RGB and resized, bilinear, to ``image_size x image_size``
      (the whole image, aspect ratio not kept: Mini-ImageNet images are made this way
      from ImageNet, so 84x84 files pass through unchanged). uint8 ``[N, S, S, 3]``.

    Raises :class:`DataError` for a missing ``root``, a class count other than
    ``expected_classes`` (when given), a class with too few images, and an
    unreadable image (naming the file).
    """
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise DataError(
            f"image folder {root!r} does not exist; pass `--config.data.data_dir=` a folder "
            "with one subfolder of images per class."
        )
    classes = sorted(
        d
        for d in os.listdir(root)
        if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
    )
    if not classes or (expected_classes is not None and len(classes) != expected_classes):
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        expected = "at least one" if expected_classes is None else str(expected_classes)
        raise DataError(
            f"image folder {root} has {len(classes)} class subfolders ({shown}) but "
            f"{expected} are expected; point data_dir at the folder that holds one "
            "subfolder per class (e.g. merge Mini-ImageNet's train/val/test class folders)."
        )
    needed = train_per_class + test_per_class
    files: list[list[str]] = []
    for name in classes:
        class_files = _list_images(os.path.join(root, name))
        if len(class_files) < needed:
            raise DataError(
                f"class folder {os.path.join(root, name)} has {len(class_files)} images but "
                f"{needed} are needed ({train_per_class} train + {test_per_class} test); "
                "add images or lower train_per_class/test_per_class."
            )
        files.append([os.path.join(root, name, f) for f in class_files[:needed]])

    def split(lo: int, hi: int) -> tuple[list[str], np.ndarray]:
        paths = [p for class_files in files for p in class_files[lo:hi]]
        labels = np.repeat(np.arange(len(classes), dtype=np.int32), hi - lo)
        return paths, labels

    train_paths, train_labels = split(0, train_per_class)
    test_paths, test_labels = split(train_per_class, needed)
    # PIL releases the GIL while decoding and resizing, so threads scale.
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        read = functools.partial(_read_resized, image_size=image_size)
        train_images = _stack(list(pool.map(read, train_paths, chunksize=64)), image_size)
        test_images = _stack(list(pool.map(read, test_paths, chunksize=64)), image_size)
    return InMemoryData(
        name="mini_imagenet",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(classes),
    )


def _stack(images: list[np.ndarray], image_size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack(images)
