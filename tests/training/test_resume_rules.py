"""What may change when a run is resumed, and what is refused before anything is written.

The resumes start from copies of the session's tiny run (``tiny_run``, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re

import ml_collections
import numpy as np
import pytest
from support import tiny, workdirs

from configs import digits
from mcjax import masks
from mcjax.training import config as resume_rules
from mcjax.training import config as validation
from mcjax.training import loop
from mcjax.training.workdir import Checkpointer, CheckpointMismatch


@pytest.mark.parametrize(
    "field, value",
    [("phase_epochs", (0.02, 0.03, 0.02, 0.02)), ("batch_size", 16), ("mask_learning_rate", 0.1)],
)
def test_resume_with_another_schedule_is_refused_naming_the_field(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps(tiny.digits_config().to_dict()))
    config = tiny.digits_config()
    config[field] = value
    with pytest.raises(validation.ConfigError) as info:
        resume_rules.check_workdir_matches(str(tmp_path), config)
    assert len(info.value.problems) == 1
    assert f"config.{field} is " in str(info.value) and "--force_resume" in str(info.value)


def test_forced_resume_past_phase_one_freezes_exactly_once(tiny_run, tmp_path):
    """Stopped after step 6 of 22; resumed with phase 1 ending at step 4 (--force_resume):
    the first step freezes the masks (as a fresh run of the new schedule would at its
    phase boundary), training never sees all-zero connectivity."""
    workdir = tmp_path / "run"
    workdirs.copy_until(tiny_run.workdir, workdir, 6)
    checkpoints = Checkpointer(str(workdir))
    at_stop, _ = checkpoints.restore(6, workdirs.template(tiny.digits_config()))
    checkpoints.close()
    assert not bool(at_stop.masks_frozen)
    config = tiny.digits_config()
    config.phase_epochs = (0.02, 0.03, 0.02, 0.02)  # 4, 5, 4, 4 steps: step 6 is phase 2
    summary = loop.train_and_evaluate(
        resume_rules.from_config_dict(config), str(workdir), force_resume=True
    )
    assert summary["steps"] == 17
    fan_in = config.model.fan_in
    expected = np.asarray(masks.top_k(at_stop.params["masks"], fan_in))
    with open(workdir / "connectivity_frozen.json") as f:
        frozen = json.load(f)
    assert frozen["step"] == 6  # the first step of the resumed run
    for index, module in enumerate(frozen["modules"][1:]):
        np.testing.assert_array_equal(module["binary"], expected[index])
    checkpoints = Checkpointer(str(workdir))
    last, _ = checkpoints.restore(17, workdirs.template(config))
    checkpoints.close()
    assert bool(last.masks_frozen)
    # K ones per row, never all-zero connectivity.
    np.testing.assert_array_equal(last.fixed_masks, expected)
    np.testing.assert_array_equal(np.asarray(last.fixed_masks).sum(-1), fan_in)
    # The masks stopped learning at the freeze.
    np.testing.assert_array_equal(last.params["masks"], at_stop.params["masks"])


@pytest.mark.parametrize("without_config_json", [False, True])
def test_forced_resume_into_another_shape_leaves_the_workdir_byte_identical(
    tiny_run, tmp_path, without_config_json
):
    workdir = tmp_path / "run"
    workdirs.copy_until(tiny_run.workdir, workdir, 12)
    if without_config_json:
        os.remove(workdir / "config.json")
    before = workdirs.hashes(workdir)
    config = tiny.digits_config(arch="11,4,4")  # bottleneck width 4 instead of 2
    with pytest.raises(CheckpointMismatch, match=r"step 12 .* does not fit"):
        loop.train_and_evaluate(
            resume_rules.from_config_dict(config),
            str(workdir),
            force_resume=not without_config_json,
        )
    assert workdirs.hashes(workdir) == before
    assert not (workdir / "corrupt_checkpoints").exists()


def test_another_seed_on_resume_is_refused(tiny_run, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny.digits_config().to_dict()))
    config = tiny.digits_config()
    config.seed = 1
    with pytest.raises(validation.ConfigError, match=r"config\.seed is 1, .* used 0"):
        resume_rules.check_workdir_matches(str(tmp_path), config)
    # Without config.json, the checkpoint's own record of the seed refuses it.
    workdir = tmp_path / "run"
    workdirs.copy_until(tiny_run.workdir, workdir, 12)
    os.remove(workdir / "config.json")
    before = workdirs.hashes(workdir)
    with pytest.raises(validation.ConfigError, match=r"config\.seed is 1, .* step 12"):
        loop.train_and_evaluate(resume_rules.from_config_dict(config), str(workdir))
    assert workdirs.hashes(workdir) == before


def test_bookkeeping_may_change_on_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(digits.get_config().to_dict()))
    config = digits.get_config()
    for field in resume_rules.RESUMABLE_FIELDS:
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        value = node[leaf]
        options = {
            "model.branch_impl": "grouped",
            "model.dtype": "bfloat16",
            "data.data_dir": "/elsewhere",
            "model.zero_init_residual": not value,
        }
        if field in options:
            node[leaf] = options[field]
        elif isinstance(value, float):
            node[leaf] = value * 2
        else:
            node[leaf] = value + 3
    resume_rules.check_workdir_matches(str(tmp_path), config)


def test_every_other_field_is_compared_on_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(digits.get_config().to_dict()))
    flat = resume_rules._flat(digits.get_config().to_dict())
    compared = [f for f in flat if f not in resume_rules.RESUMABLE_FIELDS]
    assert {"seed", "batch_size", "phase_epochs", "model.arch", "data.name"} <= set(compared)
    for field in compared:
        tree = digits.get_config().to_dict()
        *parents, leaf = field.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = "changed"
        config = ml_collections.ConfigDict(tree, type_safe=False)
        with pytest.raises(validation.ConfigError, match=re.escape(f"config.{field} is 'changed'")):
            resume_rules.check_workdir_matches(str(tmp_path), config)
