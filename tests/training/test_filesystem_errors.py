"""Errors of the file system end a run as one ``error:`` line and exit status 2.

A full disk (bytes or inodes) during orbax's asynchronous save used to print 5 to 48
tracebacks and exit 1; a ``checkpoints`` replaced by a file, a ``metrics.jsonl``
replaced by a directory or a workdir removed during a run gave tracebacks, and a
``checkpoints`` that is a file made a rerun start silently from step 0. The in-process
tests call ``mcjax.main`` itself (flags parsed as the command line does) on the tiny
digits run of tests/conftest.py resumed at step 18, with the damage done after the
first resumed step; the slow test fills a real (tmpfs) disk.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import pytest
from support import entry_points, processes
from support.tiny import TINY_FLAGS

from mcjax.training import workdir as checkpoint
from mcjax.training.workdir import Checkpointer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_LOG_LINE = re.compile(r"^[IWEF]\d{4} |^step ")
# tensorstore's report of a full disk, as orbax raised it in the main thread.
FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "opt_state.0" in OCDBT database at local file '
    '"{d}/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed '
    'writing: "{d}/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/eb5f": '
    "Failed to write 25228 bytes to file 8: No space left on device [os_error_code='28']"
)


@pytest.fixture()
def run_main():
    """``run_main(*flags)``: ``python -m mcjax.main`` in this process
    (:func:`support.entry_points.run_main`); ``(status, lines, stderr)``, the lines being
    stderr without log and progress lines."""

    def call(*args: str):
        ran = entry_points.run_main(*args)
        return ran.status, ran.lines, ran.err

    return call


def _copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    os.remove(workdir / "summary.json")


def _after_first_step(monkeypatch, action) -> None:
    real = Checkpointer.record_finished
    done = []

    def record_finished(self):  # the loop calls it after every step
        if not done:
            done.append(True)
            action()
        return real(self)

    monkeypatch.setattr(Checkpointer, "record_finished", record_finished)


def _one_line(status, lines, err) -> str:
    assert status == checkpoint.EXIT_BAD_INPUT == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------ a full disk


def test_orbax_reports_of_a_full_disk_become_an_os_error_naming_the_step(tmp_path, monkeypatch):
    checkpoints = Checkpointer(str(tmp_path), keep=2)
    directory = checkpoints.directory
    checkpoints.save(3, {"w": [1.0, 2.0]}, {"phase": 1})
    checkpoints.wait()

    def failing_wait():
        raise ValueError(FULL_DISK.format(d=directory))

    monkeypatch.setattr(checkpoints.manager, "wait_until_finished", failing_wait)
    with pytest.raises(OSError) as info:
        checkpoints.wait()
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == os.path.join(directory, "3")
    monkeypatch.undo()
    checkpoints.close()


def test_a_full_disk_during_an_async_save_is_one_line_and_exit_2(
    tiny_run, tmp_path, run_main, monkeypatch
):
    from mcjax.training import loop

    whole = tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)

    def full_disk(config, workdir, **kwargs):  # as orbax raises it in the main thread
        raise ValueError(FULL_DISK.format(d=os.path.join(workdir, "checkpoints")))

    monkeypatch.setattr(loop, "train_and_evaluate", full_disk)
    line = _one_line(*run_main("--workdir", str(workdir), *TINY_FLAGS))
    assert "no space left" in line and str(workdir / "checkpoints") in line and "intact" in line


def test_the_tracebacks_a_failed_save_prints_are_dropped(capsys):
    from mcjax.training import workdir as filesystem

    handler = logging.StreamHandler()
    filesystem.quiet_failed_saves(handler)
    quiet = next(f for f in handler.filters if isinstance(f, filesystem.QuietFilesystemErrors))

    def record(name, pathname, error):
        return logging.LogRecord(
            name, logging.ERROR, pathname, 1, "save failed", None, (type(error), error, None)
        )

    full = ValueError(FULL_DISK.format(d="/w/checkpoints"))
    orbax_file = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    assert not quiet.filter(record("absl", orbax_file, full))
    assert not quiet.filter(record("asyncio", "/asyncio/base_events.py", OSError(errno.ENOSPC, "")))
    # Anything else is still logged: another error of orbax's, or the program's own.
    assert quiet.filter(record("absl", orbax_file, ValueError("Timeout waiting for key")))
    assert quiet.filter(record("absl", "/mcjax/training/loop.py", full))

    # tensorstore reports the writes of a failed save that end after orbax closed their
    # event loop (through sys.excepthook or sys.unraisablehook): not printed.
    closed = asyncio.new_event_loop()
    closed.close()
    try:
        closed.call_soon_threadsafe(lambda: None)
    except RuntimeError as error:
        late = error
    sys.excepthook(RuntimeError, late, late.__traceback__)
    sys.unraisablehook(
        types.SimpleNamespace(
            exc_type=RuntimeError,
            exc_value=late,
            exc_traceback=late.__traceback__,
            err_msg=None,
            object=None,
        )
    )
    assert capsys.readouterr().err == ""
    other = RuntimeError("something else")
    sys.excepthook(RuntimeError, other, None)
    assert "something else" in capsys.readouterr().err


# ------------------------------------------------- paths removed or replaced


def test_a_save_into_checkpoints_replaced_by_a_file_is_an_os_error_naming_it(tmp_path):
    checkpoints = Checkpointer(str(tmp_path), keep=2)
    checkpoints.save(1, {"w": [1.0, 2.0]}, {"phase": 1})
    checkpoints.wait()
    os.rename(tmp_path / "checkpoints", tmp_path / "moved")
    (tmp_path / "checkpoints").write_text("a file now")
    with pytest.raises(OSError) as info:
        checkpoints.save(2, {"w": [1.0, 2.0]}, {"phase": 1})
    assert info.value.errno == errno.ENOTDIR
    assert info.value.filename == str(tmp_path / "checkpoints")
    checkpoints.close()


def test_checkpoints_that_is_a_file_is_refused_at_the_start(tmp_path, run_main):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    line = _one_line(*run_main("--workdir", str(workdir), *TINY_FLAGS))
    assert str(workdir / "checkpoints") in line and "not a directory" in line
    assert sorted(os.listdir(workdir)) == [".lock", "checkpoints"]  # nothing trained


# Each pays a resumed run's compiles; the two slow ones are covered in the default run by
# the cheaper tests of Checkpointer.save and of WorkdirLock.lost.
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("checkpoints_file", marks=pytest.mark.slow),
        "metrics_directory",
        pytest.param("workdir_removed", marks=pytest.mark.slow),
    ],
)
def test_a_path_replaced_during_a_run_is_one_line_and_exit_2(
    tiny_run, tmp_path, run_main, monkeypatch, damage
):
    whole = tiny_run.workdir
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 18)

    def break_it():
        if damage == "checkpoints_file":
            os.rename(workdir / "checkpoints", tmp_path / "moved_checkpoints")
            (workdir / "checkpoints").write_text("a file now")
        elif damage == "metrics_directory":
            os.remove(workdir / "metrics.jsonl")
            (workdir / "metrics.jsonl").mkdir()
        else:
            shutil.rmtree(workdir)

    _after_first_step(monkeypatch, break_it)
    line = _one_line(*run_main("--workdir", str(workdir), *TINY_FLAGS))
    expected = {
        "checkpoints_file": str(workdir / "checkpoints"),
        "metrics_directory": str(workdir / "metrics.jsonl"),
        "workdir_removed": "was removed",
    }[damage]
    assert expected in line, line


# ------------------------------------------------------------ a real full disk


@pytest.mark.slow
def test_a_full_tmpfs_is_one_line_and_the_run_resumes_once_there_is_space(tiny_run, tmp_path):
    """Needs root (mount); the checkpoints of steps 3 and 6 fit in 1.5 MB, step 9 not."""
    digest = tiny_run.digest
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    args = ["--workdir", str(disk / "run"), *TINY_FLAGS]
    try:
        full = processes.run_main(args, timeout=600)
        lines = [
            line for line in full.stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)
        ]
        line = _one_line(full.returncode, lines, full.stderr)
        assert "no space left" in line
        finished = sorted(int(n) for n in os.listdir(disk / "run/checkpoints") if n.isdigit())
        assert finished, "not even the first checkpoint fitted"
        # The disk may fill between orbax's finished step and its manifest: the last step
        # with a manifest is intact (a step without one is restored unverified).
        sums = disk / "run" / "checkpoint_sums"
        manifested = [s for s in finished if (sums / f"{s}.sha256.json").exists()]
        assert manifested, "no checkpoint got its manifest"
        checkpoints = Checkpointer(str(disk / "run"))
        assert checkpoints.verify(manifested[-1])  # the last good checkpoint is intact
        checkpoints.close()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = processes.run_main(args, timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        assert f"state digest    {digest[:16]}" in rerun.stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_checkpoint_module_names_no_step_for_errors_outside_a_save():
    # The context manager passes OSErrors through untouched and leaves other errors alone.
    with pytest.raises(KeyError), checkpoint._os_errors("/w/checkpoints/3"):
        raise KeyError("not the file system's")
    with pytest.raises(OSError) as info, checkpoint._os_errors("/w/checkpoints/3"):
        raise OSError(errno.EROFS, "Read-only file system", "/w/checkpoints/3/x")
    assert info.value.filename == "/w/checkpoints/3/x"
