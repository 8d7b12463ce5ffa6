"""Checkpoints: damaged ones are caught (orbax's errors and our own checksums), moved aside,
and the run goes on from the previous one; checksums are written once a save finishes."""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import numpy as np
from support import workdirs

from mcjax.training import loop, outputs
from mcjax.training.config import from_config_dict
from mcjax.training.metrics import read_records
from mcjax.training.workdir import Checkpointer


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()]
    return max(files, key=lambda p: p.stat().st_size)


def _copy_with_damaged_step_22(whole, workdir, damage: str) -> None:
    shutil.copytree(whole, workdir)
    os.remove(workdir / "summary.json")
    target = _largest_data_file(workdir / "checkpoints" / "22")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        target.write_bytes(data)


def _check_moved_aside(workdir, caplog) -> list[str]:
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("step 22" in w and "corrupt" in w for w in warnings), warnings
    moved = [
        name
        for name in os.listdir(workdir / "corrupt_checkpoints")
        if name.startswith("22-") and (workdir / "corrupt_checkpoints" / name).is_dir()
    ]
    assert len(moved) == 1
    assert any(str(workdir / "corrupt_checkpoints" / moved[0]) in w for w in warnings), warnings
    return warnings


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tiny_run, tmp_path, caplog):
    """Without its manifest, so that orbax's own error is what catches the truncation."""
    workdir = tmp_path / "run"
    _copy_with_damaged_step_22(tiny_run.workdir, workdir, "truncate")
    os.remove(workdir / "checkpoint_sums" / "22.sha256.json")
    with caplog.at_level("WARNING"):
        summary = loop.train_and_evaluate(from_config_dict(tiny_run.config), str(workdir))
    _check_moved_aside(workdir, caplog)
    # Step 21 was restored and step 22 trained again, to the same state.
    assert summary["state_digest"] == tiny_run.digest
    assert workdirs.checkpoint_steps(workdir)[-2:] == [21, 22]
    steps = [r["step"] for r in read_records(workdir / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"


def test_flipped_bytes_in_latest_checkpoint_are_caught_by_checksums(tiny_run, tmp_path, caplog):
    """Orbax restores flipped bytes silently; the manifest's sha256 catches them."""
    workdir = tmp_path / "run"
    _copy_with_damaged_step_22(tiny_run.workdir, workdir, "flip")
    checkpoints = Checkpointer(str(workdir), keep=20)
    with caplog.at_level("WARNING"):
        state, _, step = checkpoints.restore_latest(workdirs.template(tiny_run.config))
    expected, _ = checkpoints.restore(21, workdirs.template(tiny_run.config))
    checkpoints.close()
    warnings = _check_moved_aside(workdir, caplog)
    assert any("sha256" in w for w in warnings), warnings
    assert step == 21 and outputs.state_digest(state) == outputs.state_digest(expected)
    assert workdirs.checkpoint_steps(workdir)[-1] == 21


def test_checkpoint_without_manifest_is_restored_unverified(tiny_run, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.workdir / "checkpoints", workdir / "checkpoints")
    checkpoints = Checkpointer(str(workdir), keep=20)
    with caplog.at_level("WARNING"):
        _, _, step = checkpoints.restore_latest(workdirs.template(tiny_run.config))
    checkpoints.close()
    assert step == 22
    assert any("no checksum manifest" in r.getMessage() for r in caplog.records)


def test_manifest_is_written_once_the_save_finishes(tmp_path):
    checkpoints = Checkpointer(str(tmp_path), keep=2)
    checkpoints.save(1, {"w": np.arange(4.0)}, {"phase": 1})
    deadline = time.monotonic() + 30
    while not os.path.exists(checkpoints.manifest_path(1)) and time.monotonic() < deadline:
        checkpoints.record_finished()  # what the training loop calls after each step
        time.sleep(0.01)
    assert checkpoints.verify(1)
    checkpoints.close()
