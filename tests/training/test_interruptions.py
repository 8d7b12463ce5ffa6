"""Runs survive interruptions: SIGTERM, SIGKILL, NaNs, a SIGTERM during the final outputs.

Every case ends in the state of the session's uninterrupted tiny run (``tiny_run``,
tests/conftest.py), or in a documented exit status with one line naming the problem.
A signal from outside is sent to a real ``python -m mcjax.main`` process; the rest runs in
this process, where the tiny run's programs are already compiled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import jax
import numpy as np
import pytest
from support import processes, tiny, workdirs
from support.entry_points import run_main

from mcjax.data import in_memory
from mcjax.training import loop, outputs
from mcjax.training import workdir as run_workdir
from mcjax.training.config import from_config_dict
from mcjax.training.metrics import read_records
from mcjax.training.workdir import Checkpointer


def _resume(config, workdir) -> dict:
    summary = loop.train_and_evaluate(from_config_dict(config), str(workdir))
    steps = [r["step"] for r in read_records(workdir / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"
    return summary


def test_sigterm_saves_exits_75_and_resumes(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    process = processes.start_main(workdir)
    try:
        saved = processes.wait_for(process, lambda: 3 in workdirs.checkpoint_steps(workdir))
        assert saved, "the run never saved step 3"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=900)
    finally:
        process.kill()
    assert process.returncode == run_workdir.EXIT_PREEMPTED == 75, stderr
    assert "Traceback" not in stderr
    lines = processes.message_lines(stderr)
    assert len(lines) == 1 and "SIGTERM" in lines[0], stderr
    stopped = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert 3 <= stopped < tiny.TOTAL_STEPS
    assert max(workdirs.checkpoint_steps(workdir)) == stopped  # the step it stopped at
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(stopped)  # finished, with its checksums
    checkpoints.close()
    assert _resume(tiny_run.config, workdir)["state_digest"] == tiny_run.digest


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_then_resume(tiny_run, tmp_path):
    """Killed while orbax writes a step (its ``*.orbax-checkpoint-tmp`` directory exists)."""
    workdir = tmp_path / "run"

    def writing():
        names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
        return [n for n in names if ".orbax-checkpoint-tmp" in n and int(n.split(".")[0]) >= 6]

    process = processes.start_main(workdir)
    try:
        seen = processes.wait_for(process, writing)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert seen, "no checkpoint was caught being written"
    assert process.returncode == -signal.SIGKILL
    assert _resume(tiny_run.config, workdir)["state_digest"] == tiny_run.digest


@pytest.mark.slow
@pytest.mark.parametrize("delay", [4.0, 9.0, 14.0])
def test_sigkill_after_a_delay_then_resume_from_the_command_line(tiny_run, tmp_path, delay):
    workdir = tmp_path / "run"
    process = processes.start_main(workdir)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    result = processes.run_main(["--workdir", str(workdir), *tiny.TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    with open(workdir / "summary.json") as f:
        assert json.load(f)["state_digest"] == tiny_run.digest


def _check_stopped_at_non_finite_step(ran, workdir, config, k: int) -> None:
    """Exit 3, one line naming step ``k`` (phase 2), and the checkpoint of step 9 intact."""
    assert ran.status == run_workdir.EXIT_NON_FINITE == 3, ran.err
    assert len(ran.lines) == 1, ran.err
    assert f"step {k} (phase 2)" in ran.lines[0] and "non-finite" in ran.lines[0]
    assert workdirs.checkpoint_steps(workdir) == [3, 6, 9]
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(9)
    state, meta, step = checkpoints.restore_latest(workdirs.template(config))
    checkpoints.close()
    assert step == 9 and int(state.step) == 9 and meta["phase"] == 1
    for leaf in jax.tree.leaves(state.params):
        assert np.isfinite(np.asarray(leaf)).all()
    real = np.asarray(state.params["masks"])
    assert real.min() >= 0.0 and real.max() <= 1.0


def test_non_finite_loss_at_step_k_exits_3_naming_step_and_phase(tiny_run, tmp_path, monkeypatch):
    """NaN images at step k (phase 2, steps 9-13; the last checkpoint before it is step
    9): the tiny run's compiled steps meet a non-finite loss."""
    k = 10
    real_batch = in_memory.InMemoryInput.train_batch

    def poisoned_batch(self, step, *args, **kwargs):
        images, labels = real_batch(self, step, *args, **kwargs)
        return (images * np.nan if step == k else images), labels

    monkeypatch.setattr(in_memory.InMemoryInput, "train_batch", poisoned_batch)
    workdir = tmp_path / "run"
    ran = run_main("--workdir", str(workdir), *tiny.TINY_FLAGS)
    _check_stopped_at_non_finite_step(ran, workdir, tiny_run.config, k)


# The debug flag compiles steps of its own (the NaN is injected inside them); the test
# above checks the same exit through the tiny run's steps.
@pytest.mark.slow
def test_nan_injected_at_step_k_exits_3_naming_step_and_phase(tiny_run, tmp_path):
    k = 10
    workdir = tmp_path / "run"
    ran = run_main(
        "--workdir", str(workdir), *tiny.TINY_FLAGS, f"--config.debug_inject_nan_at_step={k}"
    )
    _check_stopped_at_non_finite_step(ran, workdir, tiny_run.config, k)


def test_sigterm_during_the_final_outputs_exits_preempted(tiny_run, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    # Every step done: only the final outputs are left.
    workdirs.copy_until(tiny_run.workdir, workdir, tiny.TOTAL_STEPS)
    real_finish = outputs.finish

    def finish_under_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, during the export
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(outputs, "finish", finish_under_sigterm)
    with pytest.raises(run_workdir.Preempted, match=f"SIGTERM after step {tiny.TOTAL_STEPS}"):
        loop.train_and_evaluate(from_config_dict(tiny_run.config), str(workdir))
    monkeypatch.setattr(outputs, "finish", real_finish)
    assert loop.train_and_evaluate(from_config_dict(tiny_run.config), str(workdir))[
        "state_digest"
    ] == (tiny_run.digest)
