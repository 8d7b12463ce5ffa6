"""A real run whose summary.json was cut short is rerun by the sweep: python -m mcjax.main
resumes from the run's last checkpoint, trains nothing more, and writes the same summary
(the same state digest). The default tier checks the sweep's side with a stand-in run
(tests/sweeps/test_sweep_planning_safety.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# The tiny digits run (a few steps of an 11,2,4 network), its checkpoints every 3 steps.
TINY = [
    "--config.model.arch=11,2,4",
    "--config.model.fan_in=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=6",
    "--config.phase_epochs=(0.05,0.03,0.02,0.02)",
    "--config.checkpoint_every_steps=3",
    "--config.log_every_steps=2",
    "--config.eval_every_epochs=100.0",
]
ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}


@pytest.mark.slow
def test_a_finished_run_with_a_truncated_summary_is_rerun_to_the_same_result(tmp_path):
    command = [sys.executable, "-m", "mcjax.sweep", "--workdir", str(tmp_path), *TINY]
    first = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr + first.stdout
    summary_path = tmp_path / "seed=0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(summary_path.read_text()[:40])  # cut short, as by a full disk

    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "1 runs, 0 finished, 1 to run" in again.stdout
    assert "seed=0: resuming" in again.stdout
    rewritten = json.loads(summary_path.read_text())
    assert rewritten["state_digest"] == summary["state_digest"]
    assert rewritten["steps"] == summary["steps"]
    assert rewritten["test_accuracy"] == summary["test_accuracy"]
