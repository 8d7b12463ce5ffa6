"""mcjax.data.augment: crops and flips are exact views, keys depend only on the global index."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax.data import augment, batch_order


def _images(n: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, channels), np.uint8)


def _mean(images: np.ndarray) -> np.ndarray:
    return (images.mean(0) / 255.0).astype(np.float32)


def _normalized(images: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255.0) - mean


def _find_view(padded: np.ndarray, out: np.ndarray) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) whose crop of ``padded`` equals ``out``."""
    crop_h, crop_w = out.shape[:2]
    found = []
    for top, left in itertools.product(
        range(padded.shape[0] - crop_h + 1), range(padded.shape[1] - crop_w + 1)
    ):
        crop = padded[top : top + crop_h, left : left + crop_w]
        for flipped in (False, True):
            view = crop[:, ::-1] if flipped else crop
            if np.allclose(view, out, atol=1e-6, rtol=0):
                found.append((top, left, flipped))
    return found


def test_example_keys_are_fold_ins_of_step_and_global_index():
    key = jax.random.key(3)
    keys = jax.jit(augment.example_keys)(key, 7, jnp.arange(4, 8))
    for row, index in enumerate(range(4, 8)):
        expected = jax.random.fold_in(jax.random.fold_in(key, 7), index)
        np.testing.assert_array_equal(jax.random.key_data(keys[row]), jax.random.key_data(expected))
    raw = augment.example_keys(jax.random.PRNGKey(3), 7, jnp.arange(4))
    assert raw.shape == (4, 2) and raw.dtype == jnp.uint32


def test_cifar_train_is_a_padded_crop_and_flip_of_the_input():
    images = _images(6, 12, 10)
    mean = _mean(images)
    keys = augment.example_keys(jax.random.key(0), 0, jnp.arange(6))
    out = np.asarray(jax.jit(augment.cifar_train)(keys, images, mean))
    assert out.shape == (6, 12, 10, 3) and out.dtype == np.float32
    offsets, flips = augment.random_crop_flip_params(keys, max_offset=(8, 8), flip=True)
    # Padding is zero after normalisation (the mean's value), as in fb.resnet.torch.
    padded = np.pad(_normalized(images, mean), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(6):
        found = _find_view(padded[i], out[i])
        assert found == [(int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))]


def test_crop_flip_train_matches_numpy_reference():
    images = _images(5, 14, 14)
    mean = _mean(images)
    keys = augment.example_keys(jax.random.key(1), 3, jnp.arange(5))
    out = np.asarray(augment.crop_flip_train(keys, images, mean, crop=9))
    assert out.shape == (5, 9, 9, 3)
    offsets, flips = map(
        np.asarray, augment.random_crop_flip_params(keys, max_offset=(5, 5), flip=True)
    )
    x = _normalized(images, mean)
    for i, ((top, left), flipped) in enumerate(zip(offsets, flips, strict=True)):
        expected = x[i, top : top + 9, left : left + 9]
        if flipped:
            expected = expected[:, ::-1]
        np.testing.assert_allclose(out[i], expected, atol=1e-6, rtol=0)


def test_digits_train_shifts_by_at_most_one_pixel_and_never_flips():
    images = _images(8, 8, 8, channels=1)
    mean = _mean(images)
    keys = augment.example_keys(jax.random.key(2), 0, jnp.arange(8))
    out = np.asarray(augment.digits_train(keys, images, mean))
    padded = np.pad(_normalized(images, mean), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(8):
        found = _find_view(padded[i], out[i])
        assert len(found) == 1 and not found[0][2]
    _, flips = augment.random_crop_flip_params(
        augment.example_keys(jax.random.key(2), 0, jnp.arange(500)), max_offset=(2, 2), flip=False
    )
    assert not np.asarray(flips).any()


def test_random_draws_cover_every_offset_and_flip_half_the_time():
    keys = augment.example_keys(jax.random.key(0), 11, jnp.arange(4000))
    offsets, flips = map(
        np.asarray, augment.random_crop_flip_params(keys, max_offset=(8, 8), flip=True)
    )
    for axis in range(2):
        np.testing.assert_array_equal(np.unique(offsets[:, axis]), np.arange(9))
    assert 0.45 < flips.mean() < 0.55
    # The two offsets of an example are not tied to each other.
    assert np.mean(offsets[:, 0] == offsets[:, 1]) < 0.2


def test_augmentation_depends_only_on_key_step_and_global_index():
    images = _images(16, 12, 12)
    mean = _mean(images)
    key = jax.random.key(5)
    augment_fn = jax.jit(augment.cifar_train)
    whole = augment_fn(augment.example_keys(key, 4, jnp.arange(16)), images, mean)
    # Two "devices" each holding half of the global batch, indices matching.
    first = augment_fn(augment.example_keys(key, 4, jnp.arange(8)), images[:8], mean)
    second = augment_fn(augment.example_keys(key, 4, jnp.arange(8, 16)), images[8:], mean)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    # Reordering the batch (same global indices) reorders the result.
    order = np.random.default_rng(0).permutation(16)
    shuffled = augment_fn(augment.example_keys(key, 4, jnp.asarray(order)), images[order], mean)
    np.testing.assert_array_equal(shuffled, np.asarray(whole)[order])
    # Another step draws other views.
    other = augment_fn(augment.example_keys(key, 5, jnp.arange(16)), images, mean)
    assert not np.array_equal(other, whole)


def test_eval_views_subtract_the_mean():
    images = _images(4, 10, 10)
    mean = _mean(images)
    plain = np.asarray(augment.plain_eval(images, mean))
    np.testing.assert_allclose(plain, images / 255.0 - mean, atol=1e-6)
    np.testing.assert_allclose(plain.mean(0), 0.0, atol=1e-6)  # the mean of these images
    centre = np.asarray(augment.center_crop_eval(images, mean, crop=6))
    assert centre.shape == (4, 6, 6, 3)
    # The same as cropping image and mean centrally, then subtracting (cf. export.predict).
    expected = images[:, 2:8, 2:8] / 255.0 - mean[2:8, 2:8]
    np.testing.assert_allclose(centre, expected, atol=1e-6)
    with pytest.raises(ValueError, match="larger"):
        augment.center_crop_eval(images, mean, crop=11)


def test_epoch_permutation_is_a_pure_permutation():
    a = batch_order.epoch_permutation(0, 3, 100)
    np.testing.assert_array_equal(a, batch_order.epoch_permutation(0, 3, 100))
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    assert not np.array_equal(a, batch_order.epoch_permutation(0, 4, 100))
    assert not np.array_equal(a, batch_order.epoch_permutation(1, 3, 100))
    a[0] = -1  # the caller's copy: the cache is not touched
    assert batch_order.epoch_permutation(0, 3, 100)[0] != -1


def test_train_batch_indices_walk_epochs_without_repeats():
    n, batch = 103, 10  # 10 steps per epoch, 3 examples dropped each epoch
    epoch0 = np.concatenate([batch_order.train_batch_indices(7, s, n, batch) for s in range(10)])
    assert len(np.unique(epoch0)) == 100 and epoch0.min() >= 0 and epoch0.max() < n
    np.testing.assert_array_equal(epoch0, batch_order.epoch_permutation(7, 0, n)[:100])
    # Step 10 starts epoch 1; asking out of order gives the same batch.
    np.testing.assert_array_equal(
        batch_order.train_batch_indices(7, 10, n, batch),
        batch_order.epoch_permutation(7, 1, n)[:10],
    )
    later = batch_order.train_batch_indices(7, 25, n, batch)
    batch_order.train_batch_indices(7, 3, n, batch)
    np.testing.assert_array_equal(later, batch_order.train_batch_indices(7, 25, n, batch))
    with pytest.raises(ValueError):
        batch_order.train_batch_indices(7, 0, n, n + 1)


@pytest.mark.parametrize(("n", "batch"), [(10, 4), (12, 4), (3, 8), (0, 4)])
def test_eval_batches_count_every_example_once(n, batch):
    counts = np.zeros(max(n, 1), int)
    batches = list(batch_order.eval_batches(n, batch))
    assert len(batches) == -(-n // batch)
    for indices, valid in batches:
        assert indices.shape == valid.shape == (batch,)
        assert valid.dtype == bool
        np.add.at(counts, indices[valid], 1)
        assert (indices[~valid] == 0).all()
    if n:
        np.testing.assert_array_equal(counts, 1)


def test_rows_of_a_global_batch_do_not_depend_on_who_loads_them():
    """Each process loads its rows of every batch (multi-host); the rows must be the ones
    of the whole batch, augmentation included, and so must the evaluation rows."""
    from configs import digits
    from mcjax.training.config import from_config_dict

    config = digits.get_config()
    config.batch_size, config.eval_batch_size = 16, 12
    data = from_config_dict(config).make_input(key=jax.random.key(5))
    for step in (0, 7):
        images, labels = data.train_batch(step)
        for rows in (slice(0, 4), slice(4, 12), slice(12, 16)):
            part_images, part_labels = data.train_batch(step, rows)
            np.testing.assert_array_equal(part_images, images[rows])
            np.testing.assert_array_equal(part_labels, labels[rows])
    whole = next(data.eval_batches())
    part = next(data.eval_batches(slice(6, 12)))
    for a, b in zip(part, whole, strict=True):
        np.testing.assert_array_equal(a, b[6:12])
