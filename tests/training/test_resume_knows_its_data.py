"""A resumed run knows the data it was trained on, and keeps a history of what changed.

Checkpoints record the data's fingerprint (every data input has one); a resume on other
data of the same shape is refused unless forced, and every start after the first appends
what changed (allowed or forced) to ``resume_log.jsonl`` instead of rewriting
``config.json``. The resumes reuse the tiny digits run of tests/conftest.py at step 18,
with the digits changed in one pixel standing for "another data set of the same shape".
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import pytest

from configs import digits
from mcjax.data import sources
from mcjax.training import config as resume_rules
from mcjax.training import config as validation
from mcjax.training import loop
from mcjax.training.workdir import Checkpointer


def _copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    os.remove(workdir / "summary.json")


def _hashes(directory: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def other_digits(monkeypatch):
    """The digits with one training pixel changed: another data set of the same shape."""
    real = sources.load_digits

    def load_other(**options):
        data = real(**options)
        images = data.train_images.copy()
        images[0, 3, 3, 0] ^= 0xFF
        return sources.InMemoryData(
            name=data.name,
            train_images=images,
            train_labels=data.train_labels,
            test_images=data.test_images,
            test_labels=data.test_labels,
            num_classes=data.num_classes,
        )

    monkeypatch.setattr(sources, "load_digits", load_other)


def test_a_resume_on_other_data_of_the_same_shape_is_refused(tiny_run, tmp_path, other_digits):
    config, whole = tiny_run.config, tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)
    before = _hashes(workdir)
    with pytest.raises(validation.ConfigError) as info:
        loop.train_and_evaluate(resume_rules.from_config_dict(config), str(workdir))
    message = str(info.value)
    assert len(info.value.problems) == 1
    assert "not the data the checkpoint of step 18 was trained on" in message
    assert "--force_resume" in message
    assert _hashes(workdir) == before  # nothing written


def test_a_forced_resume_on_other_data_is_recorded_and_config_json_kept(
    tiny_run, tmp_path, other_digits
):
    config, whole = tiny_run.config, tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)
    config_json = (workdir / "config.json").read_bytes()
    checkpoints = Checkpointer(str(workdir))
    _, old_meta = checkpoints.restore(18, _abstract_state(config))
    checkpoints.close()
    summary = loop.train_and_evaluate(
        resume_rules.from_config_dict(config), str(workdir), force_resume=True
    )
    assert (workdir / "config.json").read_bytes() == config_json  # the run's start, kept
    (record,) = [json.loads(line) for line in (workdir / "resume_log.jsonl").open()]
    assert record["step"] == 18 and record["forced"] is True
    assert record["data_fingerprint"] == [old_meta["data_fingerprint"], summary["data_fingerprint"]]
    assert record["data_fingerprint"][0] != record["data_fingerprint"][1]
    checkpoints = Checkpointer(str(workdir))
    _, new_meta = checkpoints.restore(22, _abstract_state(config))
    checkpoints.close()
    assert new_meta["data_fingerprint"] == summary["data_fingerprint"]  # steps 21-22's data


def _abstract_state(config):
    import jax

    from mcjax.training import steps

    typed = resume_rules.from_config_dict(config)
    net = typed.model.network(typed.data)
    tx = typed.schedule.optimizer(typed.schedule.phases(1437))
    return jax.eval_shape(lambda: steps.create_state(net, tx, jax.random.key(0)))


def test_every_change_on_resume_is_recorded_and_the_next_resume_follows_it(tmp_path):
    start = digits.get_config()
    resume_rules.record_start(str(tmp_path), start, step=0, forced=False)
    config_json = (tmp_path / "config.json").read_bytes()
    assert json.loads(config_json)["model"]["dtype"] == "float32"

    # An allowed change (the compute dtype) and a forced one (a longer phase 1).
    changed = digits.get_config()
    changed.model.dtype = "bfloat16"
    resume_rules.check_workdir_matches(str(tmp_path), changed)  # allowed
    resume_rules.record_start(str(tmp_path), changed, step=120, forced=False)
    longer = digits.get_config()
    longer.model.dtype = "bfloat16"
    longer.phase_epochs = (20.0, *start.phase_epochs[1:])
    with pytest.raises(validation.ConfigError, match=r"config\.phase_epochs"):
        resume_rules.check_workdir_matches(str(tmp_path), longer)
    resume_rules.record_start(str(tmp_path), longer, step=300, forced=True)

    assert (tmp_path / "config.json").read_bytes() == config_json  # never rewritten
    records = [json.loads(line) for line in (tmp_path / "resume_log.jsonl").open()]
    assert [(r["step"], r["forced"]) for r in records] == [(120, False), (300, True)]
    assert records[0]["changes"] == {"model.dtype": ["float32", "bfloat16"]}
    assert records[1]["changes"] == {
        "phase_epochs": [list(start.phase_epochs), list(longer.phase_epochs)]
    }
    # The next resume continues the run as it now is: the longer schedule, not the first.
    resume_rules.check_workdir_matches(str(tmp_path), longer)
    with pytest.raises(validation.ConfigError, match=r"resume_log\.jsonl"):
        resume_rules.check_workdir_matches(str(tmp_path), changed)


def test_checkpoint_metadata_from_before_fingerprints_still_resumes():
    meta = {"seed": 0, "data": "digits", "model": {"arch": "11,2,4"}}
    expected = {**meta, "data_fingerprint": "sha256:abc", "data_dir": ""}
    resume_rules.check_checkpoint_meta(meta, expected, 12)  # nothing to compare: allowed
    with pytest.raises(validation.ConfigError, match="not the data"):
        resume_rules.check_checkpoint_meta({**meta, "data_fingerprint": "sha256:def"}, expected, 12)
