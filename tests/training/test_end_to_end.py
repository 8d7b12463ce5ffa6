"""End-to-end training on tiny data the tests write: every data set, resume, freezing.

The digits run is the session's tiny run (``tiny_run``, tests/conftest.py); the other data
sets train their own tiny runs, in the slow tier.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from support import fake_data, tiny, workdirs

from configs import cifar10, cifar100, imagenet, mini_imagenet
from mcjax import masks
from mcjax.training import loop
from mcjax.training.config import from_config_dict
from mcjax.training.metrics import read_records
from mcjax.training.workdir import Checkpointer

OUTPUTS = [
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "connectivity.json",
    "connectivity.png",
    "active_branches.png",
    "learning_curves.png",
]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _check_outputs(workdir, expected_test_examples):
    for name in OUTPUTS:
        assert os.path.exists(os.path.join(workdir, name)), name
    summary = _json(os.path.join(workdir, "summary.json"))
    for key in (
        "test_accuracy",
        "params_train",
        "params_test",
        "flops_train",
        "flops_test",
        "steps",
        "wall_seconds",
        "state_digest",
    ):
        assert key in summary, key
    assert summary["test_examples"] == expected_test_examples
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["params_test"] <= summary["params_train"]
    records = read_records(os.path.join(workdir, "metrics.jsonl"))
    assert {r["phase"] for r in records} == {1, 2, 3, 4}
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    for name in ("connectivity.png", "learning_curves.png"):
        with Image.open(os.path.join(workdir, name)) as image:
            assert image.size[0] > 100
    return summary


def test_digits_end_to_end_with_pruned_model(tiny_run):
    workdir, summary = tiny_run.workdir, tiny_run.summary
    # 360 = 60 batches of 6
    _check_outputs(workdir, expected_test_examples=tiny.DIGITS_TEST_EXAMPLES)
    # K = 1: the learned connectivity left dead blocks, and the exported model has none.
    assert summary["params_test"] < summary["params_train"]
    from mcjax import export
    from mcjax.data import sources

    model = export.load(str(workdir / "pruned_model"))
    data = sources.load_digits()
    logits = export.predict(model, data.test_images)
    accuracy = float((np.argmax(logits, -1) == data.test_labels).mean())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_cifar10_end_to_end_and_eval_count(tmp_path):
    fake_data.prepare_cifar(tmp_path / "tfds", num_train=40, num_test=13, name="cifar10")
    config = tiny.tiny(cifar10.get_config(), data_dir=str(tmp_path / "tfds"))
    config.phase_epochs = (1, 1, 1, 1)  # 5 steps each
    summary = _check_outputs_after(config, tmp_path / "run", 13)  # 13 = 2 x 6 + 1
    assert summary["dataset"] == "cifar10"


@pytest.mark.slow
def test_cifar100_end_to_end(tmp_path):
    # 7 test examples: one full eval batch of 6 and one padded (eval batches may not
    # exceed the test set).
    fake_data.prepare_cifar(tmp_path / "tfds", num_train=24, num_test=7, name="cifar100")
    config = tiny.tiny(cifar100.get_config(), data_dir=str(tmp_path / "tfds"))
    config.phase_epochs = (1, 1, 1, 1)
    _check_outputs_after(config, tmp_path / "run", 7)


@pytest.mark.slow
def test_mini_imagenet_end_to_end(tmp_path):
    fake_data.make_image_folder(tmp_path / "images", num_classes=3, per_class=7, size=(30, 24))
    config = tiny.tiny(
        mini_imagenet.get_config(),
        data_dir=str(tmp_path / "images"),
        num_classes=3,
        folder_image_size=20,
        image_size=16,
        train_per_class=5,
        test_per_class=2,
    )
    config.phase_epochs = (1, 1, 1, 1)
    summary = _check_outputs_after(config, tmp_path / "run", 6)
    assert summary["dataset"] == "mini_imagenet"


@pytest.mark.slow
def test_imagenet_end_to_end_reports_top5(tmp_path):
    rng = np.random.default_rng(0)

    def examples(prefix, count):
        def gen():
            for i in range(count):
                pixels = rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)
                yield (
                    f"{prefix}{i}",
                    {
                        "file_name": f"{prefix}{i}.JPEG",
                        "image": Image.fromarray(pixels),
                        "label": i % 7,
                    },
                )

        return gen

    fake_data.prepare_imagenet(tmp_path / "tfds", examples("t", 16), examples("v", 7))
    config = tiny.tiny(imagenet.get_config(), data_dir=str(tmp_path / "tfds"), image_size=32)
    config.model.stem = "imagenet"
    config.phase_epochs = (1, 1, 1, 1)  # 2 steps each
    summary = _check_outputs_after(config, tmp_path / "run", 7)
    assert 0.0 <= summary["test_accuracy_top5"] <= 1.0
    assert summary["test_accuracy_top5"] >= summary["test_accuracy"]
    from mcjax import export
    from mcjax.data import streaming

    model = export.load(str(tmp_path / "run" / "pruned_model"))  # ImageNet's per-channel std
    np.testing.assert_array_equal(model.std, streaming.IMAGENET_STD)
    np.testing.assert_array_equal(model.mean_image, streaming.IMAGENET_MEAN)


def _check_outputs_after(config, workdir, test_examples):
    loop.train_and_evaluate(from_config_dict(config), str(workdir))
    summary = _check_outputs(workdir, test_examples)
    assert os.path.exists(workdir / "pruned_model" / "model.json")
    return summary


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_state(tiny_run, tmp_path):
    config, whole, summary = tiny_run.config, tiny_run.workdir, tiny_run.summary
    # The workdir a run killed after step 6 leaves behind: its checkpoints up to 6.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole, interrupted)
    for name in os.listdir(interrupted / "checkpoints"):
        if name.isdigit() and int(name) > 6:
            shutil.rmtree(interrupted / "checkpoints" / name)
    os.remove(interrupted / "summary.json")
    resumed = loop.train_and_evaluate(from_config_dict(config), str(interrupted))
    assert resumed["state_digest"] == summary["state_digest"]
    assert resumed["steps"] == summary["steps"] == tiny.TOTAL_STEPS
    steps = [r["step"] for r in read_records(interrupted / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"


def test_connectivity_freezes_to_top_k_at_phase_two(tiny_run, tmp_path):
    config = tiny_run.config
    workdir = tmp_path / "run"  # a copy: opening the checkpoints must not touch the original
    shutil.copytree(tiny_run.workdir, workdir)
    frozen = _json(workdir / "connectivity_frozen.json")
    final = _json(workdir / "connectivity.json")
    assert frozen["step"] == tiny.PHASE_ONE_END

    template = workdirs.template(config)
    checkpoints = Checkpointer(str(workdir))
    end_of_phase_1, _ = checkpoints.restore(tiny.PHASE_ONE_END, template)
    last, _ = checkpoints.restore(tiny.TOTAL_STEPS, template)
    expected = np.asarray(masks.top_k(end_of_phase_1.params["masks"], config.model.fan_in))
    for index, module in enumerate(frozen["modules"][1:]):
        np.testing.assert_array_equal(module["binary"], expected[index])
        np.testing.assert_array_equal(final["modules"][index + 1]["binary"], expected[index])
    np.testing.assert_array_equal(last.fixed_masks, expected)
    assert bool(last.masks_frozen) and not bool(end_of_phase_1.masks_frozen)
    # Frozen masks never move again.
    np.testing.assert_array_equal(last.params["masks"], end_of_phase_1.params["masks"])
    records = read_records(workdir / "metrics.jsonl")
    assert all(0.0 <= r["masks/min"] <= r["masks/max"] <= 1.0 for r in records if "masks/min" in r)
    assert any(r["masks/changed"] > 0 for r in records if r.get("phase") == 1)
    assert all(
        r["masks/changed"] == 0 for r in records if r.get("phase", 1) > 1 and "masks/changed" in r
    )
    checkpoints.close()
