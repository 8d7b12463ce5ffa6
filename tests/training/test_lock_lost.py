"""A run whose workdir lock is deleted or replaced stops instead of sharing its workdir.

Deleting ``.lock`` under a running run used to let a second run train in the same workdir
at the same time (both exited 0, with repeated steps in ``metrics.jsonl``). Now the run
checks its lock after every step: when it is gone, the run takes it again and stops with a
checkpoint (``LockLost(resumable=True)``, exit 75), or, when another run holds the new
lock, stops without writing more (exit 2). The in-process tests resume the tiny digits run
of tests/conftest.py at step 18; the command-line test (slow) deletes the lock of a real
run.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import time

import pytest
from support import processes
from support.tiny import TINY_FLAGS

from mcjax.training import loop
from mcjax.training import workdir as workdir_lock
from mcjax.training.config import from_config_dict
from mcjax.training.metrics import read_records
from mcjax.training.workdir import LOCK_NAME, Checkpointer, WorkdirLock

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    """The workdir a run stopped after ``last_step`` leaves: its checkpoints up to it."""
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    os.remove(workdir / "summary.json")


def _steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _after_steps(monkeypatch, count: int, action) -> None:
    """Runs ``action()`` once, after the ``count``-th training step of the run."""
    calls = {"n": 0}
    real = Checkpointer.record_finished

    def record_finished(self):  # the loop calls it after every step
        calls["n"] += 1
        if calls["n"] == count:
            action()
        return real(self)

    monkeypatch.setattr(Checkpointer, "record_finished", record_finished)


def test_the_lock_knows_when_its_file_was_deleted_or_replaced(tmp_path):
    with WorkdirLock(str(tmp_path)) as lock:
        assert lock.lost() is None
        os.remove(tmp_path / LOCK_NAME)
        assert "was deleted" in lock.lost()
        assert lock.retake() is None  # nobody else holds it: taken again
        assert lock.lost() is None
        (tmp_path / "other").write_text("")
        os.replace(tmp_path / "other", tmp_path / LOCK_NAME)
        assert "replaced" in lock.lost()
        os.remove(tmp_path / LOCK_NAME)
        with WorkdirLock(str(tmp_path)):  # a second run locks the new file
            assert "in use by a running run" in lock.retake()
    workdir = tmp_path / "run"
    workdir.mkdir()
    with WorkdirLock(str(workdir)) as lock:
        shutil.rmtree(workdir)
        assert "was removed or renamed" in lock.lost()
        assert "cannot create the lock file" in lock.retake()


def test_a_run_whose_lock_is_deleted_stops_with_a_checkpoint(tiny_run, tmp_path, monkeypatch):
    config, whole = tiny_run.config, tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)
    # Deleted after the first resumed step (19, not a step that saves by itself).
    _after_steps(monkeypatch, 1, lambda: os.remove(workdir / LOCK_NAME))
    with pytest.raises(workdir_lock.LockLost) as info:
        loop.train_and_evaluate(from_config_dict(config), str(workdir))
    assert info.value.resumable
    assert "was deleted" in str(info.value) and "step 19" in str(info.value)
    assert _steps(workdir)[-1] == 19
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(19)  # finished, with its checksums
    checkpoints.close()
    assert (workdir / LOCK_NAME).exists()  # taken again, then let go
    # That it resumes to the tiny_run run's state: the slow command-line test.


def test_a_run_whose_lock_was_taken_by_another_run_stops_without_writing(
    tiny_run, tmp_path, monkeypatch
):
    config, whole = tiny_run.config, tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)
    other = WorkdirLock(str(workdir))

    def second_run_starts():
        os.remove(workdir / LOCK_NAME)
        other.__enter__()

    _after_steps(monkeypatch, 1, second_run_starts)
    try:
        with pytest.raises(workdir_lock.LockLost) as info:
            loop.train_and_evaluate(from_config_dict(config), str(workdir))
        records_after = [r["step"] for r in read_records(str(workdir / "metrics.jsonl"))]
    finally:
        other.release()
    assert not info.value.resumable
    assert f"pid {os.getpid()}" in str(info.value) and "without saving" in str(info.value)
    assert _steps(workdir)[-1] == 18  # nothing saved past the lost lock
    assert max(records_after) <= 19


# ------------------------------------------------------------- the command line

_LOG_LINE = re.compile(r"^[IWEF]\d{4} |^step ")


@pytest.mark.slow
def test_deleting_the_lock_of_a_running_run_exits_75_and_the_rerun_finishes(tiny_run, tmp_path):
    digest = tiny_run.digest
    workdir = tmp_path / "run"
    first = processes.start_main(workdir)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "3").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.01)
        os.remove(workdir / LOCK_NAME)
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
    assert first.returncode == workdir_lock.EXIT_PREEMPTED == 75, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "was deleted" in lines[0]
    rerun = processes.run_main(["--workdir", str(workdir), *TINY_FLAGS], timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"state digest    {digest[:16]}" in rerun.stdout
