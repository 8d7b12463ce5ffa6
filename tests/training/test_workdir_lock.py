"""One run per workdir: the lock names its holder, dies with it, and refuses a second run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import REPO_ROOT, processes, tiny
from support.entry_points import run_main

from mcjax.training import workdir as run_workdir
from mcjax.training.workdir import LOCK_NAME, WorkdirBusy, WorkdirLock


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    with WorkdirLock(str(tmp_path)):
        start = time.monotonic()
        with pytest.raises(WorkdirBusy) as info, WorkdirLock(str(tmp_path)):
            pass
        assert time.monotonic() - start < 5
        assert f"pid {os.getpid()}" in str(info.value) and socket.gethostname() in str(info.value)
    with WorkdirLock(str(tmp_path)):  # released
        pass
    assert (tmp_path / LOCK_NAME).read_bytes() == b""  # a finished run leaves it empty
    # A holder killed with SIGKILL leaves no stale lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mcjax.training.workdir import WorkdirLock; "
            f"lock = WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
            "time.sleep(600)",
        ],
        cwd=REPO_ROOT,
        env=processes.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid} "):
            WorkdirLock(str(tmp_path)).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(str(tmp_path)):
        pass


def test_a_run_on_a_busy_workdir_exits_2_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with WorkdirLock(str(workdir)):  # held by this process, as by another run
        line = run_main("--workdir", str(workdir), *tiny.TINY_FLAGS).error_line()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
    assert not (workdir / "config.json").exists()


# Two command-line runs; the test above checks the same message in this process.
@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_exits_2_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    first = processes.start_main(workdir)
    try:
        lock = workdir / LOCK_NAME
        deadline = time.monotonic() + 900
        while not (lock.exists() and lock.read_bytes()) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.05)
        second = processes.run_main(["--workdir", str(workdir), *tiny.TINY_FLAGS])
        assert second.returncode == run_workdir.EXIT_BAD_INPUT == 2, second.stderr
        assert "Traceback" not in second.stderr and "FATAL" not in second.stderr
        lines = processes.message_lines(second.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode in (0, run_workdir.EXIT_PREEMPTED), stderr
    assert "Traceback" not in stderr
