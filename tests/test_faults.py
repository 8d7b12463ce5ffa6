"""Runs survive interruptions: SIGTERM, SIGKILL, corrupt checkpoints, NaNs, bad data.

Every case ends in the state of one uninterrupted tiny digits run (``state_digest``),
or in a documented exit status with one line naming the problem. The command-line
cases start ``python -m mcjax.main`` in a subprocess (each pays JAX's import and
compile again); the resumes run in this process, where the programs are compiled.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import fake_data
import jax
import numpy as np
import pytest

from mcjax.training import exit_codes, from_config, loop, run_outputs, steps
from mcjax.training.checkpoint import Checkpointer
from mcjax.training.metric_writers import read_records

# One pytest-xdist worker for these: they share the `uninterrupted` run (conftest.py).
pytestmark = pytest.mark.xdist_group("uninterrupted")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")

# The command-line twin of digits_config() (9, 5, 4, 4 steps; checkpoints every 3 steps
# and at each phase end: 3, 6, 9, 12, 14, 15, 18, 21, 22).
TINY_FLAGS = [
    "--config.model.arch=11,2,4",
    "--config.model.fan_in=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=6",
    "--config.phase_epochs=(0.05,0.03,0.02,0.02)",
    "--config.checkpoint_every_steps=3",
    "--config.log_every_steps=2",
    "--config.eval_every_epochs=100.0",
    "--config.keep_checkpoints=20",
]


def tiny_flags(*overrides: str) -> list[str]:
    """TINY_FLAGS with ``overrides`` in place of the flags they name (repeating a tuple
    flag would append to it)."""
    names = {flag.split("=")[0] for flag in overrides}
    return [f for f in TINY_FLAGS if f.split("=")[0] not in names] + list(overrides)


_ENV = {
    **os.environ,
    # As tests/conftest.py does in this process: same numerics, faster compiles.
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "JAX_PLATFORMS": "cpu",
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mcjax.main", *args]


def _start(workdir, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        _cli("--workdir", str(workdir), *TINY_FLAGS, *flags),
        cwd=REPO_ROOT,
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cli(*args), cwd=REPO_ROOT, env=_ENV, capture_output=True, text=True, timeout=timeout
    )


def _wait_for(process: subprocess.Popen, condition, timeout: float = 120.0) -> bool:
    """Polls ``condition()`` every millisecond; False if the process ended or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    return False


def _message_lines(stderr: str) -> list[str]:
    """stderr without absl's log lines and the progress lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not _ABSL_LOG_LINE.match(line) and not line.startswith("step ")
    ]


def _steps(workdir) -> list[int]:
    names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
    return sorted(int(name) for name in names if name.isdigit())


def _template(config):
    net = from_config.network(config)
    tx = from_config.optimizer(config, from_config.schedule(config, 1437))
    return steps.create_state(net, tx, jax.random.key(0))


def _resume(config, workdir) -> dict:
    summary = loop.train_and_evaluate(config, str(workdir))
    steps = [r["step"] for r in read_records(workdir / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"
    return summary


# The tiny digits run of TINY_FLAGS, in this process: the ``uninterrupted`` fixture of
# tests/conftest.py (shared with tests/test_run_safety.py).


def test_sigterm_saves_exits_75_and_resumes(uninterrupted, tmp_path):
    config, _, digest = uninterrupted
    workdir = tmp_path / "run"
    process = _start(workdir)
    try:
        assert _wait_for(process, lambda: 3 in _steps(workdir)), "the run never saved step 3"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == exit_codes.EXIT_PREEMPTED == 75, stderr
    assert "Traceback" not in stderr
    lines = _message_lines(stderr)
    assert len(lines) == 1 and "SIGTERM" in lines[0], stderr
    stopped = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert 3 <= stopped < 22
    assert max(_steps(workdir)) == stopped  # the checkpoint of the step it stopped at
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(stopped)  # finished, with its checksums
    checkpoints.close()
    assert _resume(config, workdir)["state_digest"] == digest


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_then_resume(uninterrupted, tmp_path):
    """Killed while orbax writes a step (its ``*.orbax-checkpoint-tmp`` directory exists)."""
    config, _, digest = uninterrupted
    workdir = tmp_path / "run"

    def writing():
        names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
        return [n for n in names if ".orbax-checkpoint-tmp" in n and int(n.split(".")[0]) >= 6]

    process = _start(workdir)
    try:
        seen = _wait_for(process, writing)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert seen, "no checkpoint was caught being written"
    assert process.returncode == -signal.SIGKILL
    assert _resume(config, workdir)["state_digest"] == digest


@pytest.mark.slow
@pytest.mark.parametrize("delay", [4.0, 9.0, 14.0])
def test_sigkill_after_a_delay_then_resume_from_the_command_line(uninterrupted, tmp_path, delay):
    _, _, digest = uninterrupted
    workdir = tmp_path / "run"
    process = _start(workdir)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    result = _run(["--workdir", str(workdir), *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    with open(workdir / "summary.json") as f:
        assert json.load(f)["state_digest"] == digest


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


def test_truncated_latest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, caplog):
    """Without its manifest, so that orbax's own error is what catches the truncation."""
    config, whole, digest = uninterrupted
    workdir = tmp_path / "run"
    _copy_with_damaged_step_22(whole, workdir, "truncate")
    os.remove(workdir / "checkpoint_sums" / "22.sha256.json")
    with caplog.at_level("WARNING"):
        summary = _resume(config, workdir)
    _check_moved_aside(workdir, caplog)
    # Step 21 was restored and step 22 trained again, to the same state.
    assert summary["state_digest"] == digest
    assert _steps(workdir)[-2:] == [21, 22]


def test_flipped_bytes_in_latest_checkpoint_are_caught_by_checksums(
    uninterrupted, tmp_path, caplog
):
    """Orbax restores flipped bytes silently; the manifest's sha256 catches them."""
    config, whole, _ = uninterrupted
    workdir = tmp_path / "run"
    _copy_with_damaged_step_22(whole, workdir, "flip")
    checkpoints = Checkpointer(str(workdir), keep=20)
    with caplog.at_level("WARNING"):
        state, _, step = checkpoints.restore_latest(_template(config))
    expected, _ = checkpoints.restore(21, _template(config))
    checkpoints.close()
    warnings = _check_moved_aside(workdir, caplog)
    assert any("sha256" in w for w in warnings), warnings
    assert step == 21 and run_outputs.state_digest(state) == run_outputs.state_digest(expected)
    assert _steps(workdir)[-1] == 21


def test_checkpoint_without_manifest_is_restored_unverified(uninterrupted, tmp_path, caplog):
    config, whole, _ = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(whole / "checkpoints", workdir / "checkpoints")
    checkpoints = Checkpointer(str(workdir), keep=20)
    with caplog.at_level("WARNING"):
        _, _, step = checkpoints.restore_latest(_template(config))
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


def test_nan_at_step_k_exits_3_naming_step_and_phase(uninterrupted, tmp_path):
    config, _, _ = uninterrupted
    workdir = tmp_path / "run"
    k = 10  # phase 2 (steps 9-13); the last checkpoint before it is step 9
    result = _run(
        ["--workdir", str(workdir), *TINY_FLAGS, f"--config.debug_inject_nan_at_step={k}"]
    )
    assert result.returncode == exit_codes.EXIT_NON_FINITE == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = _message_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"step {k} (phase 2)" in lines[0] and "non-finite" in lines[0]
    assert _steps(workdir) == [3, 6, 9]
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(9)
    state, meta, step = checkpoints.restore_latest(_template(config))
    checkpoints.close()
    assert step == 9 and int(state.step) == 9 and meta["phase"] == 1
    for leaf in jax.tree.leaves(state.params):
        assert np.isfinite(np.asarray(leaf)).all()
    real = np.asarray(state.params["masks"])
    assert real.min() >= 0.0 and real.max() <= 1.0


def _bad_data_line(args: list[str]) -> str:
    result = _run(args, timeout=60)
    assert result.returncode == exit_codes.EXIT_BAD_INPUT == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = _message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_unprepared_cifar_is_one_line(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    line = _bad_data_line(
        [
            "--config=configs/cifar10.py",
            f"--config.data.data_dir={empty}",
            "--workdir",
            str(tmp_path / "run"),
        ]
    )
    assert "cifar10" in line


def _mini_imagenet(folder, workdir, num_classes):
    return [
        "--config=configs/mini_imagenet.py",
        f"--config.data.data_dir={folder}",
        f"--config.data.num_classes={num_classes}",
        "--config.data.folder_image_size=20",
        "--config.data.image_size=16",
        "--config.data.train_per_class=3",
        "--config.data.test_per_class=1",
        "--config.model.arch=11,2,4",
        "--config.model.fan_in=2",
        "--config.batch_size=4",
        "--workdir",
        str(workdir),
    ]


def test_image_folder_with_wrong_class_count_is_one_line(tmp_path):
    fake_data.make_image_folder(tmp_path / "images", num_classes=3, per_class=4)
    line = _bad_data_line(_mini_imagenet(tmp_path / "images", tmp_path / "run", 5))
    assert "3 class subfolders" in line


def test_unreadable_image_is_one_line(tmp_path):
    fake_data.make_image_folder(tmp_path / "images", num_classes=3, per_class=4)
    broken = tmp_path / "images" / "n001" / "img_02.png"
    broken.write_bytes(b"this is not a png")
    line = _bad_data_line(_mini_imagenet(tmp_path / "images", tmp_path / "run", 3))
    assert str(broken) in line
