"""The tests that need a process of their own: its environment, its start, its messages.

The time limits are generous: they only turn a hang into a failure, and a loaded machine
runs a tiny run's compiles several times slower than a quiet one.

Most command-line behaviour is tested in the test process (:mod:`support.entry_points`);
a process is started only where it is the subject: a signal, SIGKILL, a lock held by
another process, several processes, a device count fixed when JAX starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from support import REPO_ROOT
from support.tiny import TINY_FLAGS

_ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


def env(**extra: str) -> dict[str, str]:
    """The environment of a test's process: this tree's mcjax, the test session's JAX
    settings (tests/conftest.py puts them in ``os.environ``: faster compiles, the
    compilation cache and its thresholds), and ``extra`` (``XLA_FLAGS`` are added to the
    session's, not put in their place)."""
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} {extra.pop('XLA_FLAGS', '')}".strip()
    return {
        **os.environ,
        # As tests/conftest.py does in this process: same numerics, faster compiles.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "XLA_FLAGS": xla_flags,
        **extra,
    }


def main_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mcjax.main", *args]


def start_main(workdir, *flags: str, **popen) -> subprocess.Popen:
    """``python -m mcjax.main --workdir WORKDIR`` of the tiny run, with ``flags`` after."""
    return subprocess.Popen(
        main_command("--workdir", str(workdir), *TINY_FLAGS, *flags),
        cwd=REPO_ROOT,
        env=popen.pop("env", None) or env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_main(args: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python -m mcjax.main ARGS`` to its end."""
    return subprocess.run(
        main_command(*args),
        cwd=kwargs.pop("cwd", REPO_ROOT),
        env=kwargs.pop("env", None) or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def wait_for(process: subprocess.Popen, condition, timeout: float = 900.0) -> bool:
    """Polls ``condition()`` every millisecond; False if the process ended or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    return False


def message_lines(stderr: str) -> list[str]:
    """stderr without absl's log lines and the progress lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not _ABSL_LOG_LINE.match(line) and not line.startswith("step ")
    ]
