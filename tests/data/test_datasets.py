"""The readers of mcjax.data on data each test makes itself (no network, no TensorFlow)."""

import os
import time

import numpy as np
import pytest
from PIL import Image
from support import fake_data

from mcjax.data import image_folder, registry, sources
from mcjax.data.sources import DataError

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_scale():
    data = sources.load_digits()
    assert data.name == "digits" and data.num_classes == 10
    assert data.train_images.shape == (1437, 8, 8, 1)
    assert data.test_images.shape == (360, 8, 8, 1)
    assert data.train_images.dtype == np.uint8 and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int32 and data.test_labels.dtype == np.int32
    # 0..16 scaled to the full 0..255 range.
    assert data.train_images.min() == 0 and data.train_images.max() == 255
    mean = data.mean_image
    assert mean.dtype == np.float32 and mean.shape == (8, 8, 1)
    np.testing.assert_allclose(mean, data.train_images.mean(0) / 255.0, rtol=1e-6)


def test_digits_split_is_deterministic_and_stratified():
    a, b = sources.load_digits(), sources.load_digits()
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    other = sources.load_digits(seed=1)
    assert not np.array_equal(a.test_labels, other.test_labels)

    train_counts = np.bincount(a.train_labels, minlength=10)
    test_counts = np.bincount(a.test_labels, minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    # Stratified: each class's test share is 20% up to rounding.
    totals = train_counts + test_counts
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1.0)


def test_in_memory_data_rejects_labels_out_of_range():
    images = np.zeros((4, 2, 2, 1), np.uint8)
    with pytest.raises(DataError, match=r"must lie in \[0, 3\)"):
        sources.InMemoryData(
            "bad", images, np.array([0, 1, 2, 3], np.int32), images, np.zeros(4, np.int32), 3
        )


# ----------------------------------------------------------------------------- CIFAR via tfds


def test_load_tfds_cifar_reads_array_record_without_tensorflow(tmp_path):
    fake_data.prepare_cifar(tmp_path, num_train=12, num_test=5)
    data = sources.load_tfds_cifar("cifar100", data_dir=str(tmp_path))
    assert data.num_classes == 100
    assert data.train_images.shape == (12, 32, 32, 3) and data.test_images.shape == (5, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    assert sorted(data.train_labels) == list(range(12))
    assert sorted(data.test_labels) == [(1000 + i) % 100 for i in range(5)]
    assert data.train_labels.min() >= 0 and data.train_labels.max() < 100
    # Every image is the one generated for its label (lossless PNG round trip).
    for image, label in zip(data.train_images, data.train_labels, strict=True):
        np.testing.assert_array_equal(image, fake_data.cifar_pixels(int(label)))
    for image, label in zip(data.test_images, data.test_labels, strict=True):
        np.testing.assert_array_equal(image, fake_data.cifar_pixels(1000 + int(label)))


def test_load_dispatch_checks_num_classes(tmp_path):
    fake_data.prepare_cifar(tmp_path, num_train=3, num_test=2)
    loaded = registry.load("cifar100", data_dir=str(tmp_path), num_classes=100)
    assert loaded.train_images.shape == (3, 32, 32, 3)
    with pytest.raises(DataError, match="num_classes=10 but cifar100 has 100"):
        registry.load("cifar100", data_dir=str(tmp_path), num_classes=10)


def test_missing_cifar_raises_quickly_with_instructions(tmp_path):
    empty = tmp_path / "no_data_here"
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        sources.load_tfds_cifar("cifar10", data_dir=str(empty))
    assert time.monotonic() - start < 10.0
    message = str(info.value)
    assert str(empty) in message
    assert "tfds build cifar10" in message and "--file_format=array_record" in message
    assert "--config.data.data_dir=" in message


def test_cifar_prepared_as_tfrecord_is_refused_with_instructions(tmp_path):
    # A copy made by a plain `tfds build` (TFRecord) needs TensorFlow: say so, not crash.
    fake_data.prepare_cifar(tmp_path, num_train=2, num_test=1)
    (info_path,) = tmp_path.glob("cifar100/*/dataset_info.json")
    text = info_path.read_text()
    assert '"fileFormat": "array_record"' in text
    info_path.write_text(text.replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"'))
    with pytest.raises(DataError, match=r"stored as tfrecord.*--file_format=array_record"):
        sources.load_tfds_cifar("cifar100", data_dir=str(tmp_path))


def test_unknown_names_raise_data_error():
    with pytest.raises(DataError, match="unknown data set"):
        registry.load("mnist")
    with pytest.raises(DataError, match="unknown CIFAR"):
        sources.load_tfds_cifar("cifar1000", data_dir=None)
    with pytest.raises(DataError, match="streamed"):
        registry.load("imagenet")


# ----------------------------------------------------------------------------- image folder


def _colour(class_index: int, file_index: int) -> tuple[int, int, int]:
    return (class_index * 40 + 10, file_index * 30 + 5, 200)


def _make_folder(root, num_classes: int = 5, per_class: int = 7) -> None:
    """Class folders of uniform-colour images (colour encodes class and file)."""
    for c in range(num_classes):
        class_dir = root / f"n{c:03d}"
        class_dir.mkdir(parents=True)
        for f in range(per_class):
            # Non-square, so the resize is exercised; uniform, so it is exact.
            image = Image.new("RGB", (12, 10), _colour(c, f))
            image.save(class_dir / f"img_{f:02d}.png")
        (class_dir / "README.txt").write_text("not an image")  # ignored
        (class_dir / ".hidden.png").write_bytes(b"ignored")  # hidden: ignored


def test_image_folder_split_labels_and_resize(tmp_path):
    _make_folder(tmp_path)
    data = image_folder.load_image_folder(
        str(tmp_path), image_size=8, train_per_class=5, test_per_class=2, expected_classes=5
    )
    assert data.num_classes == 5 and data.name == "mini_imagenet"
    assert data.train_images.shape == (25, 8, 8, 3) and data.test_images.shape == (10, 8, 8, 3)
    assert data.train_images.dtype == np.uint8 and data.test_labels.dtype == np.int32
    np.testing.assert_array_equal(data.train_labels, np.repeat(np.arange(5), 5))
    np.testing.assert_array_equal(data.test_labels, np.repeat(np.arange(5), 2))
    # Files sorted by name: the first five of each class train, the next two test.
    for row, (c, f) in enumerate((c, f) for c in range(5) for f in range(5)):
        assert (data.train_images[row] == _colour(c, f)).all()
    for row, (c, f) in enumerate((c, f) for c in range(5) for f in range(5, 7)):
        assert (data.test_images[row] == _colour(c, f)).all()


def test_image_folder_reads_grey_and_jpeg_and_dispatch(tmp_path):
    _make_folder(tmp_path, num_classes=2, per_class=3)
    Image.new("L", (20, 20), 128).save(tmp_path / "n000" / "img_00.png")  # grey -> RGB
    Image.new("RGB", (9, 9), (50, 60, 70)).save(tmp_path / "n001" / "img_00.jpg")
    data = registry.load(
        "mini_imagenet",
        data_dir=str(tmp_path),
        num_classes=2,
        folder_image_size=6,
        train_per_class=2,
        test_per_class=1,
    )
    assert data.train_images.shape == (4, 6, 6, 3)
    assert (data.train_images[0] == 128).all()
    # img_00.jpg sorts before img_00.png.
    assert np.abs(data.train_images[2].astype(int) - (50, 60, 70)).max() <= 3


def test_image_folder_wrong_class_count(tmp_path):
    _make_folder(tmp_path, num_classes=4)
    with pytest.raises(DataError, match=r"has 4 class subfolders .* but 5 are expected"):
        image_folder.load_image_folder(
            str(tmp_path), train_per_class=5, test_per_class=2, expected_classes=5
        )


def test_image_folder_too_few_images(tmp_path):
    _make_folder(tmp_path)
    os.remove(tmp_path / "n003" / "img_06.png")
    with pytest.raises(DataError, match=r"n003 has 6 images but 7 are needed"):
        image_folder.load_image_folder(
            str(tmp_path), image_size=8, train_per_class=5, test_per_class=2, expected_classes=5
        )


def test_image_folder_corrupt_file_is_named(tmp_path):
    _make_folder(tmp_path)
    bad = tmp_path / "n002" / "img_03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")
    with pytest.raises(DataError, match=r"cannot read image .*n002.img_03\.png"):
        image_folder.load_image_folder(
            str(tmp_path), image_size=8, train_per_class=5, test_per_class=2, expected_classes=5
        )


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257 * 64], [257 * 128, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # really a 16-bit PNG
    pixels = image_folder._read_resized(str(path), 2)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 64], [128, 255]])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder.load_image_folder(str(tmp_path / "absent"))
    with pytest.raises(DataError, match=r"needs `--config\.data\.data_dir="):
        registry.load("mini_imagenet", data_dir="")


# ----------------------------------------------------------------------------- registry


def test_every_dataset_entry_has_its_loader_and_views():
    """A table entry is all a new data set needs besides its own code: every view it
    names must exist in the input code, and every in-memory entry must have a loader."""
    from mcjax.data import in_memory, registry

    for spec in registry.DATASETS.values():
        if spec.streamed:
            assert spec.load is None
            continue
        assert callable(spec.load), spec.name
        assert spec.train_view in in_memory._TRAIN_VIEWS, spec.name
        assert spec.eval_view in in_memory._EVAL_VIEWS, spec.name
        assert spec.crops or spec.stored_size is not None, spec.name


def test_registry_image_size_rules():
    from mcjax.data import registry

    assert registry.get("cifar10").image_size_problem(32) is None
    assert "32 for cifar10" in registry.get("cifar10").image_size_problem(28)
    assert registry.get("mini_imagenet").image_size_problem(64) is None
    assert "at most 84" in registry.get("mini_imagenet").image_size_problem(96)
    assert registry.get("imagenet").image_size_problem(320) is None
    with pytest.raises(ValueError, match="unknown data set 'mnist'; choose one of digits"):
        registry.get("mnist")
