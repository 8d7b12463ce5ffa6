"""Every input that make_input gives serves the one Input interface the program uses.

In memory (digits, an image folder read whole) and streamed (ImageNet through host
threads), each on data this file makes.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image
from support import fake_data

from mcjax.data import inputs
from mcjax.data.types import Input


def _interface_members() -> set[str]:
    """The attributes and methods that :class:`Input` declares."""
    methods = {name for name, value in vars(Input).items() if callable(value)}
    return set(Input.__annotations__) | {name for name in methods if not name.startswith("_")}


def _imagenet(root) -> None:
    rng = np.random.default_rng(0)

    def examples(prefix, count):
        def generate():
            for i in range(count):
                pixels = rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                yield f"{prefix}{i}", {"file_name": f"{prefix}{i}.JPEG", "image": image, "label": i}

        return generate

    fake_data.prepare_imagenet(root, examples("t", 6), examples("v", 3))


# name, image_size, batch_size, eval_batch_size, channels, loader options
_CASES = {
    "digits": (8, 8, 100, 1, {}),
    "mini_imagenet": (6, 2, 3, 3, dict(folder_image_size=8, train_per_class=2, test_per_class=1)),
    "imagenet": (16, 4, 2, 3, {}),
}


@pytest.fixture(params=sorted(_CASES))
def made(request, tmp_path):
    name = request.param
    image_size, batch_size, eval_batch_size, channels, options = _CASES[name]
    data_dir, num_classes = None, None
    if name == "mini_imagenet":
        fake_data.make_image_folder(tmp_path / "folder", num_classes=2, per_class=3)
        data_dir, num_classes = str(tmp_path / "folder"), 2
    elif name == "imagenet":
        _imagenet(tmp_path / "tfds")
        data_dir = str(tmp_path / "tfds")
    made = inputs.make_input(
        name,
        data_dir=data_dir,
        image_size=image_size,
        seed=3,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        key=jax.random.key(0),
        num_classes=num_classes,
        options=options,
    )
    return made, (image_size, channels)


def test_every_input_serves_the_input_interface(made):
    made, (image_size, channels) = made
    missing = sorted(name for name in _interface_members() if not hasattr(made, name))
    assert not missing, f"{type(made).__name__} lacks {missing} of mcjax.data.types.Input"
    assert isinstance(made, Input)
    assert made.spec.name == made.name

    images, labels = made.train_batch(1)
    assert images.shape == (made.batch_size, image_size, image_size, channels)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < made.num_classes
    # A process that holds rows of the batch gets exactly those rows of it.
    rows_images, rows_labels = made.train_batch(1, slice(1, 2))
    np.testing.assert_array_equal(rows_images, images[1:2])
    np.testing.assert_array_equal(rows_labels, labels[1:2])

    counted = 0
    for images, labels, valid in made.eval_batches():
        assert images.shape == (made.eval_batch_size, image_size, image_size, channels)
        assert labels.shape == valid.shape == (made.eval_batch_size,)
        counted += int(np.sum(valid))
    assert counted == made.num_test  # every test example exactly once

    assert isinstance(made.fingerprint, str) and made.fingerprint.count(":") == 1
    assert made.crop in (None, image_size)
    assert np.asarray(made.mean_image).dtype == np.float32


def test_a_class_without_a_member_of_the_interface_is_not_an_input():
    class NoEvaluation:
        def train_batch(self, step, rows=slice(None)):
            raise NotImplementedError

    assert "eval_batches" in _interface_members() and "fingerprint" in _interface_members()
    assert not isinstance(NoEvaluation(), Input)
