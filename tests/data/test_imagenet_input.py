"""mcjax.data.streaming on a tiny imagenet2012 that tfds writes here, without TensorFlow."""

import io
import time

import numpy as np
import pytest
from PIL import Image
from support import fake_data

from mcjax.data import batch_order, streaming
from mcjax.data.sources import DataError

NUM_TRAIN, NUM_VALIDATION = 12, 5


def _colour(label: int) -> np.ndarray:
    """A distinct base colour per label, far from 0 and 255 so noise does not clip."""
    return np.array([40 + 13 * label, 200 - 11 * label, 60 + 7 * label], np.float64)


def _train_pixels(i: int) -> np.ndarray:
    """Textured (so crops and flips differ), of varying size and aspect."""
    rng = np.random.default_rng(i)
    height, width = rng.integers(40, 90, 2)
    noise = rng.integers(-15, 16, (height, width, 3))
    return (_colour(i) + noise).astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """12 textured train images, 5 uniform validation images; label i for image i."""

    def train():
        for i in range(NUM_TRAIN):
            image = Image.fromarray(_train_pixels(i))
            yield f"t{i}", {"file_name": f"t{i}.JPEG", "image": image, "label": i}

    def validation():
        for i in range(NUM_VALIDATION):
            colour = tuple(int(c) for c in _colour(i))
            image = Image.new("RGB", (50 + 7 * i, 40), colour)  # uniform: exact check
            yield f"v{i}", {"file_name": f"v{i}.JPEG", "image": image, "label": i}

    root = tmp_path_factory.mktemp("tfds")
    fake_data.prepare_imagenet(root, train, validation)
    return str(root)


def _denormalize(images: np.ndarray) -> np.ndarray:
    return (images * streaming.IMAGENET_STD + streaming.IMAGENET_MEAN) * 255.0


def test_train_batch_shape_dtype_and_labels(data_dir):
    with streaming.ImageNetInput(data_dir, seed=0, image_size=32, num_workers=2) as source:
        assert (source.num_train, source.num_test, source.num_classes) == (12, 5, 1000)
        indices = batch_order.train_batch_indices(0, 0, source.num_train, 4)
        images, labels = source.train_batch(0, indices)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (4,) and labels.dtype == np.int32
    assert np.isfinite(images).all()
    # Each image still shows its label's colour (crops of a noisy uniform colour).
    for image, label in zip(_denormalize(images), labels, strict=True):
        assert np.abs(image.mean((0, 1)) - _colour(int(label))).max() < 8


def test_train_batch_is_a_pure_function_of_seed_step_and_position(data_dir):
    indices = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    with streaming.ImageNetInput(data_dir, seed=1, image_size=24, prefetch=0) as plain:
        reference, ref_labels = plain.train_batch(7, indices)
        again, _ = plain.train_batch(7, indices)
        other_step, _ = plain.train_batch(8, indices)
        # Halves with their global positions, as two hosts would ask for them.
        first, _ = plain.train_batch(7, indices[:4], positions=np.arange(4))
        second, _ = plain.train_batch(7, indices[4:], positions=np.arange(4, 8))
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(np.concatenate([first, second]), reference)
    assert not np.array_equal(other_step, reference)
    # Index 1 appears twice at different positions: two different random views.
    assert not np.array_equal(reference[1], reference[3])
    with streaming.ImageNetInput(data_dir, seed=1, image_size=24, num_workers=3) as fresh:
        images, labels = fresh.train_batch(7, indices)
    np.testing.assert_array_equal(images, reference)
    np.testing.assert_array_equal(labels, ref_labels)


def test_prefetched_batches_equal_direct_ones(data_dir):
    with streaming.ImageNetInput(data_dir, seed=2, image_size=16, prefetch=2) as ahead:
        prefetched = []
        for step in range(5, 9):  # the training loop's order
            indices = batch_order.train_batch_indices(2, step, ahead.num_train, 4)
            prefetched.append((step, *ahead.train_batch(step, indices)))
        assert set(ahead._pending) == {9, 10}  # decoding ahead of the consumer
    with streaming.ImageNetInput(data_dir, seed=2, image_size=16, prefetch=0) as direct:
        for step, images, labels in prefetched:
            indices = batch_order.train_batch_indices(2, step, direct.num_train, 4)
            expected_images, expected_labels = direct.train_batch(step, indices)
            np.testing.assert_array_equal(images, expected_images)
            np.testing.assert_array_equal(labels, expected_labels)
    assert [step for step, _, _ in prefetched] == [5, 6, 7, 8]


def test_prefetch_is_not_used_for_other_indices(data_dir):
    with streaming.ImageNetInput(data_dir, seed=2, image_size=16, prefetch=2) as ahead:
        ahead.train_batch(0, batch_order.train_batch_indices(2, 0, ahead.num_train, 4))
        assert set(ahead._pending) == {1, 2}
        unplanned = np.array([0, 1, 2, 3])
        images, labels = ahead.train_batch(1, unplanned)
    with streaming.ImageNetInput(data_dir, seed=2, image_size=16, prefetch=0) as direct:
        expected_images, expected_labels = direct.train_batch(1, unplanned)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_prefetch_of_one_hosts_slice(data_dir):
    plan = [batch_order.train_batch_indices(3, step, NUM_TRAIN, 8) for step in range(3)]
    host = np.arange(4, 8)  # the second of two hosts
    with streaming.ImageNetInput(
        data_dir, seed=3, image_size=16, prefetch=1, global_batch_size=8
    ) as sliced:
        served = [sliced.train_batch(step, plan[step][host], positions=host) for step in range(2)]
        assert set(sliced._pending) == {2}
    with streaming.ImageNetInput(data_dir, seed=3, image_size=16, prefetch=0) as whole:
        for step in range(2):
            images, labels = whole.train_batch(step, plan[step])
            np.testing.assert_array_equal(served[step][0], images[host])
            np.testing.assert_array_equal(served[step][1], labels[host])


def test_corrupt_record_raises_data_error_naming_it(tmp_path):
    def broken():
        garbage = io.BytesIO(b"\xff\xd8\xff not a jpeg")
        yield "b", {"file_name": "broken.JPEG", "image": garbage, "label": 0}

    fake_data.prepare_imagenet(tmp_path, broken, broken)
    with streaming.ImageNetInput(str(tmp_path), seed=0, image_size=8) as source:
        with pytest.raises(DataError, match=r"train example 0 \(broken\.JPEG\)"):
            source.train_batch(0, np.array([0]))
        with pytest.raises(DataError, match=r"validation example 0 \(broken\.JPEG\)"):
            next(source.eval_batches(2))


def test_eval_batches_cover_the_validation_split_once(data_dir):
    with streaming.ImageNetInput(data_dir, seed=0, image_size=32, prefetch=1) as source:
        batches = list(source.eval_batches(batch_size=2))
    assert len(batches) == 3
    seen = []
    for images, labels, valid in batches:
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
        assert labels.dtype == np.int32 and valid.dtype == bool
        for image, label in zip(_denormalize(images[valid]), labels[valid], strict=True):
            # A centre crop of a uniform JPEG: the colour, up to JPEG error.
            assert np.abs(image - _colour(int(label))).max() < 6
        seen.extend(labels[valid].tolist())
    assert sorted(seen) == list(range(NUM_VALIDATION))


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        width, height = rng.integers(50, 400, 2)
        left, top, right, bottom = streaming.random_resized_crop_box(rng, width, height)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        # Rounding to whole pixels widens the bounds a little.
        assert 0.06 * width * height <= w * h <= width * height
        assert 0.7 <= w / h <= 1.4 or (w, h) in {(width, height)}
    # An image too thin for any try falls back to a centred crop of the clamped ratio.
    box = streaming.random_resized_crop_box(rng, 400, 20, scale=(0.9, 1.0))
    assert box == (186, 0, 213, 20)  # width round(20 * 4/3) = 27, centred


def test_missing_imagenet_raises_quickly_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        streaming.ImageNetInput(str(tmp_path / "empty"), seed=0)
    assert time.monotonic() - start < 10.0
    message = str(info.value)
    assert str(tmp_path / "empty") in message
    assert "tfds build imagenet2012 --manual_dir" in message
    assert "--file_format=array_record" in message


def test_eval_rows_are_the_rows_of_the_whole_batches(data_dir):
    """A host that decodes only its rows of each evaluation batch gets exactly those rows."""
    with streaming.ImageNetInput(data_dir, seed=0, image_size=32, prefetch=1) as source:
        whole = list(source.eval_batches(4))
        halves = [list(source.eval_batches(4, rows=slice(a, a + 2))) for a in (0, 2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 2
    for batch, first, second in zip(whole, *halves, strict=True):
        for full, part_a, part_b in zip(batch, first, second, strict=True):
            np.testing.assert_array_equal(np.concatenate([part_a, part_b]), full)
