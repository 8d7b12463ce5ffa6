"""Runs a sweep's runs one after another on this machine, each as ``python -m mcjax.main``.

Each run is its own process, so it has the program's behaviour and exit statuses
(:mod:`mcjax.training.workdir`), its own memory and devices, and a crash or a
diverged run does not take the sweep down. The sweep survives preemption like a run:

* The first SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) is passed to the
  running run as SIGTERM: it saves a checkpoint at its step and exits 75; the sweep then
  exits 75 too. A second SIGINT is passed on as SIGINT, which aborts the run at once.
* Each run is started in its own session (so a terminal's Ctrl-C reaches it once,
  through the sweep) and, on Linux, asks to get SIGTERM should the sweep die (the
  kernel's parent-death signal, requested by :mod:`mcjax.sweeps.stop_with_parent`
  before it becomes the run: no Python code runs between ``fork`` and ``exec``, which
  after importing JAX would warn and may deadlock): killing the sweep stops its run
  cleanly too.
* Running the same command again skips finished runs (a readable ``summary.json``) and
  resumes the interrupted one from its checkpoint.

A run's output is appended to ``RUN/train.log`` (opened without following a link);
the sweep prints one line per run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from mcjax import safe_files
from mcjax.sweeps.plan import Run, Sweep, read_summary
from mcjax.sweeps.resolve import shown
from mcjax.training import workdir as run_workdir

_STOP_WITH_PARENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stop_with_parent.py")


def main_command(args: Sequence[str]) -> list[str]:
    """``python -m mcjax.main ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mcjax.main", *args]


def _stop_with_parent(command: list[str], parent: int) -> list[str]:
    """``command`` started so that it gets SIGTERM when ``parent`` dies (on Linux)."""
    if not sys.platform.startswith("linux"):
        return command
    # -I: the helper imports only the standard library, whatever PYTHONPATH says; the
    # command it becomes gets the environment unchanged.
    return [sys.executable, "-I", _STOP_WITH_PARENT, str(parent), *command]


class _Forward:
    """While active: the first SIGTERM/SIGINT sets ``stopping`` and sends SIGTERM to the
    child; a second SIGINT sends it SIGINT."""

    def __init__(self):
        self.stopping: str | None = None
        self.child: subprocess.Popen | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        first = self.stopping is None
        if first:
            self.stopping = signal.Signals(signum).name
        send = signal.SIGTERM if first else signal.SIGINT if signum == signal.SIGINT else None
        if send is not None and self.child is not None and self.child.poll() is None:
            self.child.send_signal(send)

    def __enter__(self) -> _Forward:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _last_error(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-200:] if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith(("error:", "preempted:"))]
    return (errors or lines or [""])[-1]


def _outcome(summary: dict) -> str:
    steps, seconds = summary.get("steps"), summary.get("wall_seconds")
    text = f"test accuracy {100 * summary['test_accuracy']:.2f}%"
    if isinstance(steps, int) and isinstance(seconds, (int, float)):
        text += f", {steps} steps in {seconds:.0f} s"
    return text


def _open_log(log_path: str) -> int:
    """``RUN/train.log`` opened for appending, its directory made first; a link planted
    in its place is an ``OSError``, not a write to its target."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    return safe_files.open_no_follow(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def run_all(
    sweep: Sweep,
    runs: Sequence[Run],
    *,
    command: Callable[[Sequence[str]], list[str]] | None = None,
    out=print,
) -> int:
    """Runs every run that has not finished, in order; returns the sweep's exit status.

    0: every run finished. 75: stopped by a signal, or a run was preempted (run the same
    command again to resume). 2: a run reported bad config or data (the sweep stops;
    the others would fail alike). 3: some run stopped on a non-finite loss, 1: some run
    failed otherwise (the sweep goes on with the other runs, then returns the status).

    Args:
      sweep, runs: from :func:`mcjax.sweeps.plan.plan`.
      command: turns ``mcjax.main`` arguments into the process to start (default
        :func:`main_command`).
      out: where the progress lines go.
    """
    command = command or main_command
    todo = [run for run in runs if run.status() != "finished"]
    out(
        f"sweep {shown(sweep.workdir)}: {len(runs)} runs, {len(runs) - len(todo)} finished, "
        f"{len(todo)} to run"
    )
    failed: list[int] = []
    with _Forward() as forward:
        for index, run in enumerate(todo, start=1):
            if forward.stopping:
                break
            log_path = os.path.join(run.workdir, "train.log")
            try:
                log = _open_log(log_path)
            except OSError as error:
                why = f"cannot open {shown(log_path)} ({error.strerror})"
                out(f"[{index}/{len(todo)}] {run.name}: not started: {why}")
                failed.append(1)
                continue
            verb = "resuming" if run.status() == "interrupted" else "training"
            out(f"[{index}/{len(todo)}] {run.name}: {verb} (log: {shown(log_path)})")
            try:
                forward.child = subprocess.Popen(
                    _stop_with_parent(command(run.main_args(sweep)), os.getpid()),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,
                )
            except OSError as error:
                out(f"  not started: {shown(str(error))}")
                failed.append(1)
                continue
            finally:
                os.close(log)
            if forward.stopping:  # the signal came while the run was starting
                forward.child.send_signal(signal.SIGTERM)
            status = forward.child.wait()
            forward.child = None
            if status == 0:
                summary = read_summary(run.workdir)
                if summary is not None:
                    out(f"  done: {_outcome(summary)}")
                    continue
                out("  exited 0 without a readable summary.json (run the sweep again to redo it)")
                failed.append(1)
                continue
            detail = shown(_last_error(log_path), 300)
            if status == run_workdir.EXIT_PREEMPTED:
                out(f"  stopped (exit 75): {detail}")
                forward.stopping = forward.stopping or "preemption of the run"
                break
            out(f"  failed (exit {status}): {detail}")
            if status == run_workdir.EXIT_BAD_INPUT:
                return status
            failed.append(status)
    if forward.stopping and any(run.status() != "finished" for run in runs):
        out(f"sweep stopped ({forward.stopping}); run the same command again to resume")
        return run_workdir.EXIT_PREEMPTED
    if failed:
        return run_workdir.EXIT_NON_FINITE if run_workdir.EXIT_NON_FINITE in failed else 1
    return 0
