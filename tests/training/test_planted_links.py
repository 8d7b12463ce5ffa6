"""A run never writes through a link someone planted in its workdir.

On a shared runs directory another user may plant a symbolic link where a run writes
(``.lock``, ``config.json.tmp``, ``summary.json``, ``metrics.jsonl``, a figure, a
checkpoint manifest, the exported model). Each test plants links to a "victim" file
outside the workdir and checks that the victim is untouched and the run's file is a
regular file of its own. The last test does it for a whole resumed run (slow); the others
call the one writer each file goes through.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from mcjax import export, models
from mcjax.architectures import get_architecture
from mcjax.training import outputs as run_outputs
from mcjax.training import workdir as workdir_lock
from mcjax.training.config import from_config_dict
from mcjax.training.metrics import MetricWriter, read_records
from mcjax.training.workdir import LOCK_NAME, Checkpointer, WorkdirBusy, WorkdirLock

VICTIM_TEXT = "someone else's data, which no run may change\n"


@pytest.fixture()
def victim(tmp_path) -> pathlib.Path:
    """A file outside the workdir that links get planted to."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture()
def workdir(tmp_path) -> pathlib.Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def _plant(link: pathlib.Path, target: pathlib.Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_left_whole(workdir, victim):
    _plant(workdir / LOCK_NAME, victim)
    with pytest.raises(WorkdirBusy, match="not a regular file"), WorkdirLock(str(workdir)):
        pass
    assert victim.read_text() == VICTIM_TEXT


def test_json_outputs_replace_planted_links_and_never_write_their_targets(workdir, victim):
    # The temporary name of the old writer and the destination itself, both planted.
    for name in ("summary.json", "connectivity.json", "config.json"):
        _plant(workdir / f"{name}.tmp", victim)
    _plant(workdir / "summary.json", victim)
    run_outputs.write_json(str(workdir / "summary.json"), {"steps": 22})
    run_outputs.write_json(str(workdir / "connectivity.json"), {"modules": []})
    assert victim.read_text() == VICTIM_TEXT
    summary = workdir / "summary.json"
    assert not summary.is_symlink() and json.loads(summary.read_text()) == {"steps": 22}
    leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no temporary file is left behind


def test_metrics_appends_never_follow_a_planted_link(workdir, victim):
    writer = MetricWriter(str(workdir), enabled=True)
    writer.write(2, {"train/loss": 1.0})
    os.remove(workdir / "metrics.jsonl")
    _plant(workdir / "metrics.jsonl", victim)
    with pytest.raises(OSError) as info:
        writer.write(4, {"train/loss": 0.5})
    writer.close()
    assert info.value.filename == str(workdir / "metrics.jsonl")
    assert victim.read_text() == VICTIM_TEXT
    # A resumed run rewrites the file: the link is replaced, its target kept.
    resumed = MetricWriter(str(workdir), resume_step=2)
    resumed.write(4, {"train/loss": 0.5})
    resumed.close()
    assert victim.read_text() == VICTIM_TEXT
    assert not (workdir / "metrics.jsonl").is_symlink()
    assert [r["step"] for r in read_records(str(workdir / "metrics.jsonl"))] == [4]


def test_figures_replace_a_planted_link(workdir, victim):
    from mcjax import figures

    _plant(workdir / "connectivity.png", victim)
    live = [np.ones(2, bool), np.ones(2, bool)]
    figures.plot_connectivity([np.eye(2)], live, str(workdir / "connectivity.png"))
    assert victim.read_text() == VICTIM_TEXT
    png = workdir / "connectivity.png"
    assert not png.is_symlink() and png.read_bytes().startswith(b"\x89PNG")


def test_checkpoint_manifests_replace_planted_links(workdir, victim):
    for name in ("1.sha256.json", "1.sha256.json.tmp"):
        _plant(workdir / "checkpoint_sums" / name, victim)
    checkpoints = Checkpointer(str(workdir), keep=2)
    checkpoints.save(1, {"w": np.arange(4.0)}, {"phase": 1})
    checkpoints.close()
    assert victim.read_text() == VICTIM_TEXT
    assert not (workdir / "checkpoint_sums" / "1.sha256.json").is_symlink()
    assert Checkpointer(str(workdir)).verify(1)


def test_export_replaces_planted_links(workdir, victim):
    net = models.Network(get_architecture("11,2,4"), num_classes=3, fan_in=2, in_channels=1)
    variables = models.init(jax.random.key(0), net)
    params = {k: v for k, v in variables["params"].items() if k != "masks"}
    two_per_row = np.eye(4) + np.roll(np.eye(4), 1, axis=1)  # K = 2 inputs per block
    path = workdir / "pruned_model"
    for name in ("model.json", "arrays.npz", "model.json.tmp"):
        _plant(path / name, victim)
    export.save(
        str(path),
        net,
        params,
        variables["batch_stats"],
        [two_per_row] * (net.arch.num_modules - 1),
        mean_image=np.zeros((8, 8, 1), np.float32),
    )
    assert victim.read_text() == VICTIM_TEXT
    assert not (path / "model.json").is_symlink() and not (path / "arrays.npz").is_symlink()
    assert export.load(str(path)).net.num_classes == 3


@pytest.mark.parametrize("name", ["checkpoints", "tensorboard", "pruned_model"])
def test_a_run_directory_planted_as_a_link_is_refused_before_anything_is_written(
    workdir, tmp_path, name
):
    elsewhere = tmp_path / "someone_elses_directory"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text(VICTIM_TEXT)
    _plant(workdir / name, elsewhere)
    with pytest.raises(workdir_lock.BadWorkdir, match=f"{name} is a symbolic link"):
        workdir_lock.check_layout(str(workdir))
    assert os.listdir(elsewhere) == ["keep.txt"]


# ------------------------------------------------------------------ a whole run


def _copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    os.remove(workdir / "summary.json")


@pytest.mark.slow
def test_a_resumed_run_writes_through_none_of_the_links_planted_in_its_workdir(
    tiny_run, tmp_path, victim
):
    """Resumed at step 18 of 22: it appends metrics, saves two checkpoints and writes
    every output, with links planted at each of those names."""
    from mcjax.training import loop

    config, whole, digest = tiny_run.config, tiny_run.workdir, tiny_run.digest
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)
    planted = [
        "config.json.tmp",
        "summary.json",
        "summary.json.tmp",
        "connectivity.json",
        "connectivity.json.tmp",
        "connectivity.png",
        "learning_curves.png",
        "metrics.jsonl",
        "checkpoint_sums/21.sha256.json",
        "checkpoint_sums/21.sha256.json.tmp",
        "pruned_model/model.json",
        "pruned_model/arrays.npz",
    ]
    for name in planted:
        if (workdir / name).exists():
            os.remove(workdir / name)
        _plant(workdir / name, victim)
    summary = loop.train_and_evaluate(from_config_dict(config), str(workdir))
    assert victim.read_text() == VICTIM_TEXT
    assert summary["state_digest"] == digest
    for name in planted:
        path = workdir / name
        if name.endswith(".tmp"):
            # Temporary files get fresh random names: a link at the old fixed name is
            # never opened, and stays as planted.
            assert os.readlink(path) == str(victim), name
        else:
            assert not path.is_symlink(), name
