"""A tiny sweep of real runs (python -m mcjax.sweep starting python -m mcjax.main): two
connectivity modes x two seeds of the tiny digits run (support.tiny).

Killed in the middle of its second run, the sweep resumes it when run again, ends with
the result of an uninterrupted run, aggregates four runs into two rows, and a third
invocation trains nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from support import REPO_ROOT, processes
from support.tiny import TINY_FLAGS, digits_config

from mcjax.training import loop
from mcjax.training.config import from_config_dict


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _read(path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_tiny_sweep_is_killed_resumes_and_aggregates(tmp_path):
    workdir = tmp_path / "sweep"
    command = [sys.executable, "-m", "mcjax.sweep", "--workdir", str(workdir), "--seeds", "2"]
    command += ["--grid", "model.connectivity=learned,full", *TINY_FLAGS]
    names = [
        "connectivity=learned,seed=0",
        "connectivity=learned,seed=1",
        "connectivity=full,seed=0",
        "connectivity=full,seed=1",
    ]
    second = workdir / names[1]

    sweep = subprocess.Popen(
        command, cwd=REPO_ROOT, env=processes.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        started = _wait_for(lambda: (second / "checkpoints" / "3").exists(), timeout=900)
        sweep.kill()  # SIGKILL: the kernel sends the run SIGTERM (parent-death signal)
        sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert started, "the second run never saved step 3"
    # The run saves a checkpoint at its step and exits 75, by itself.
    assert _wait_for(lambda: "preempted:" in _read(second / "train.log"), timeout=300)
    time.sleep(2.0)  # its process ends right after that line
    assert (workdir / names[0] / "summary.json").exists()
    assert not (second / "summary.json").exists()

    resumed = subprocess.run(
        command, cwd=REPO_ROOT, env=processes.env(), capture_output=True, text=True, timeout=1800
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "4 runs, 1 finished, 3 to run" in resumed.stdout
    assert f"{names[1]}: resuming" in resumed.stdout
    for name in names:
        assert (workdir / name / "summary.json").exists(), name
    with open(workdir / "results.json") as f:
        results = json.load(f)
    assert [run["name"] for run in results["runs"]] == names
    assert [row["n"] for row in results["rows"]] == [2, 2]
    table = (workdir / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 11,2,4 |")]
    assert len(rows) == 2 and all(" ± " in row and "| 2/2 |" in row for row in rows)
    assert table in resumed.stdout  # printed at the end

    # The interrupted run ends where an uninterrupted one does, bit for bit.
    config = digits_config()
    config.seed = 1
    reference = loop.train_and_evaluate(from_config_dict(config), str(tmp_path / "reference"))
    by_name = {run["name"]: run for run in results["runs"]}
    assert by_name[names[1]]["state_digest"] == reference["state_digest"]

    checkpoints = second / "checkpoints"
    before = {p: os.stat(checkpoints / p).st_mtime_ns for p in os.listdir(checkpoints)}
    again = subprocess.run(
        command, cwd=REPO_ROOT, env=processes.env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert "4 runs, 4 finished, 0 to run" in again.stdout and "training" not in again.stdout
    assert {p: os.stat(checkpoints / p).st_mtime_ns for p in os.listdir(checkpoints)} == before
