"""Every data input has a ``fingerprint``: equal for the same data, different for other data.

Checkpoints record it, so that a resume on other data is refused (see
tests/training/test_resume_knows_its_data.py). In-memory data (digits, CIFAR, image
folders) is fingerprinted by its arrays; a streamed tfds data set (ImageNet) by its
prepared files.
"""

from __future__ import annotations

import shutil

import jax
import pytest
from support import fake_data

from mcjax.data import in_memory, sources


def _with(data: sources.InMemoryData, **arrays) -> sources.InMemoryData:
    fields = dict(
        name=data.name,
        train_images=data.train_images,
        train_labels=data.train_labels,
        test_images=data.test_images,
        test_labels=data.test_labels,
        num_classes=data.num_classes,
    )
    return sources.InMemoryData(**{**fields, **arrays})


def test_in_memory_fingerprint_changes_with_one_pixel_or_label_only():
    data = sources.load_digits()
    assert data.fingerprint == sources.load_digits().fingerprint  # another load
    images = data.train_images.copy()
    images[5, 0, 0, 0] += 1
    labels = data.test_labels.copy()
    labels[0] = (labels[0] + 1) % 10
    fingerprints = {
        data.fingerprint,
        _with(data, train_images=images).fingerprint,
        _with(data, test_labels=labels).fingerprint,
    }
    assert len(fingerprints) == 3
    assert data.fingerprint.startswith("sha256:")


def test_every_input_class_carries_its_datas_fingerprint():
    data = sources.load_digits()
    made = in_memory.InMemoryInput(
        data, seed=0, batch_size=8, eval_batch_size=8, key=jax.random.key(0), image_size=8
    )
    assert made.fingerprint == data.fingerprint


def test_an_image_folder_is_fingerprinted_by_its_images(tmp_path):
    from mcjax.data import image_folder

    fake_data.make_image_folder(tmp_path / "a", num_classes=2, per_class=3)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    fake_data.make_image_folder(
        tmp_path / "b", num_classes=2, per_class=3, colour=lambda c, f: (9, 9, 9)
    )

    def load(root):
        return image_folder.load_image_folder(
            str(root), image_size=8, train_per_class=2, test_per_class=1, expected_classes=2
        ).fingerprint

    assert load(tmp_path / "a") == load(tmp_path / "moved")  # the data moved: the same
    assert load(tmp_path / "a") != load(tmp_path / "b")


@pytest.mark.parametrize("change", ["same", "more_examples"])
def test_a_prepared_tfds_data_set_is_fingerprinted_by_its_files(tmp_path, change):
    fake_data.prepare_cifar(tmp_path / "one", 6, 3, name="cifar10")
    fake_data.prepare_cifar(tmp_path / "two", 6 if change == "same" else 7, 3, name="cifar10")
    fingerprints = []
    for root in ("one", "two"):
        builder, _ = sources.open_tfds_splits("cifar10", str(tmp_path / root), ("train", "test"))
        fingerprints.append(sources.tfds_fingerprint(builder, ("train", "test")))
    assert fingerprints[0].startswith("tfds-sha256:")
    assert (fingerprints[0] == fingerprints[1]) == (change == "same")
