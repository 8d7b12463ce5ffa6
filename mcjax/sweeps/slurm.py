"""A SLURM array job with one task per run, for clusters.

Each task runs ``launch/slurm.sbatch`` with its run's arguments, so it keeps that script's
conventions: SIGTERM 120 s before the time limit is passed to the training processes,
which save a checkpoint and exit 75, and the task is then requeued (``scontrol requeue``
of the task's own job id) and resumes. Finished runs are left out of ``--array``; write
and submit again to run what is left. The results are aggregated afterwards with
``python -m mcjax.sweep --workdir DIR --report``, as for a local sweep.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
from collections.abc import Sequence

from mcjax import safe_files
from mcjax.sweeps.plan import Run, Sweep
from mcjax.sweeps.resolve import SweepError, control_characters, shown

SBATCH = pathlib.Path(__file__).resolve().parent.parent.parent / "launch" / "slurm.sbatch"

# No value is written into the script unless it is one line and quoted for the reader
# of that line: bash (single quotes) for the commands and comments, and sbatch's own
# parser for the #SBATCH lines (_sbatch_quote). The only paths there are the job's log
# (--output, a %-pattern for SLURM) and the directory the tasks run in, which is a `cd`
# in the script rather than --chdir, so that bash alone reads it.
_HEADER = """#!/usr/bin/env bash
# Paths and values are single-quoted so that nothing in them expands:
# shellcheck disable=SC2016
# A sweep of {total} runs, one SLURM array task each (written by python -m mcjax.sweep).
# Submit: sbatch {script}    (options given to sbatch override the lines below)
# Then:   python -m mcjax.sweep --workdir {workdir} --report
#
# Each task execs launch/slurm.sbatch: SIGTERM before the time limit -> checkpoint, exit
# 75 -> requeue of this task; see that script for the GPU and process layout.
#SBATCH --job-name={job_name}
#SBATCH --array={array}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output={output}
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
set -euo pipefail
: "${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch}}"
cd -- {cwd}
case $SLURM_ARRAY_TASK_ID in
"""

LOG_PATTERN = "%x-%A_%a.out"  # job name, array job id, task id


class SubmitError(Exception):
    """``sbatch`` is missing or refused the job; one sentence with its reason."""


class NothingToSubmit(ValueError):
    """Every run of the sweep has finished."""


def _quote(arg: str) -> str:
    """Always single-quoted for bash (a bare comma in an array element reads as a mistake)."""
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def _sbatch_quote(value: str) -> str:
    """``value`` as one argument of an ``#SBATCH`` line.

    sbatch splits those lines itself (not through a shell): a backslash escapes the
    next character, quotes group, and an unquoted ``#`` ends the line (older versions
    end it at any ``#``, and group only with double quotes). Double quotes with ``\\``,
    ``"``, ``'`` and ``#`` escaped read back as ``value`` in every version.
    """
    return '"' + re.sub(r"""([\\"'#])""", r"\\\1", value) + '"'


def job_name(sweep: Sweep) -> str:
    """``sweep-DIRNAME``, in the characters a job name and a log file name can hold."""
    name = f"sweep-{os.path.basename(os.path.normpath(sweep.workdir))}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name)[:64]


def log_dir(sweep: Sweep) -> str:
    """Where the tasks' output goes: ``DIR/slurm``, absolute."""
    return os.path.join(os.path.abspath(sweep.workdir), "slurm")


def problems(
    sweep: Sweep,
    *,
    cwd: str | None = None,
    sbatch_path: str | os.PathLike | None = None,
) -> list[str]:
    """Why ``sweep`` cannot be written as a SLURM script, one sentence each.

    A control character (a newline above all) in a path or value would end its line
    of the script: the rest would be read as commands by bash and as the end of the
    options by sbatch. A backslash in the log's path would turn off SLURM's
    ``%``-patterns in it (each task would write the same file).
    """
    cwd = os.getcwd() if cwd is None else cwd
    sbatch_path = SBATCH if sbatch_path is None else sbatch_path
    values = [
        ("--workdir ", sweep.workdir),
        ("the current directory ", cwd),
        ("--config ", sweep.config),
        ("the path of launch/slurm.sbatch ", os.fspath(sbatch_path)),
        *[(f"--config.{field}=", value) for field, value in sweep.overrides.items()],
        *[
            (f"--grid {field}=", value)
            for axis in sweep.axes
            for point in axis
            for field, value in point.items()
        ],
    ]
    found = []
    for label, value in values:
        chars = control_characters(str(value))
        if chars:
            found.append(
                f"{label}{shown(str(value))} has a control character ({', '.join(chars)}), "
                "which would end its line of the SLURM script: use one without"
            )
    if "\\" in log_dir(sweep):
        found.append(
            f"--workdir {shown(sweep.workdir)}: SLURM reads a backslash in the log path "
            f"{shown(log_dir(sweep))} as 'no %-patterns here': use a path without one"
        )
    return list(dict.fromkeys(found))


def array_spec(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def script(
    sweep: Sweep,
    runs: Sequence[Run],
    *,
    sbatch_path: str | os.PathLike | None = None,
    cwd: str | None = None,
) -> str:
    """The array job's script; tasks are the indices of ``runs`` that have not finished.

    Every value in it is quoted for bash and for sbatch (see :func:`problems` for what
    is refused). The tasks run in ``cwd`` (default: the current directory), where
    relative paths of the sweep resolve, and exec ``sbatch_path`` (default
    ``launch/slurm.sbatch``) with their run's ``mcjax.main`` arguments.

    Raises:
      SweepError: for the problems of :func:`problems`.
      NothingToSubmit: when every run has finished.
    """
    cwd = os.getcwd() if cwd is None else cwd
    sbatch_path = SBATCH if sbatch_path is None else sbatch_path
    found = problems(sweep, cwd=cwd, sbatch_path=sbatch_path)
    found += [
        f"run {run.name}: an argument has a control character"
        for run in runs
        if any(control_characters(arg) for arg in [run.name, *run.main_args(sweep)])
    ]
    if found:
        raise SweepError(found)
    todo = [i for i, run in enumerate(runs) if run.status() != "finished"]
    if not todo:
        raise NothingToSubmit(
            f"every run of {shown(sweep.workdir)} has finished; nothing to submit"
        )
    output = os.path.join(log_dir(sweep).replace("%", "%%"), LOG_PATTERN)
    text = _HEADER.format(
        total=len(runs),
        script=_quote(os.path.join(sweep.workdir, "slurm", "sweep.sbatch")),
        workdir=_quote(sweep.workdir),
        job_name=_sbatch_quote(job_name(sweep)),
        array=array_spec(todo),
        output=_sbatch_quote(output),
        cwd=_quote(cwd),
    )
    for index, run in enumerate(runs):
        args = " ".join(_quote(a) for a in run.main_args(sweep))
        text += f"  {index}) args=({args}) ;;  # {run.name}\n"
    text += '  *) echo "no run $SLURM_ARRAY_TASK_ID in this sweep" >&2; exit 2 ;;\nesac\n'
    text += f'exec bash {_quote(os.fspath(sbatch_path))} "${{args[@]}}"\n'
    return text


def write(sweep: Sweep, runs: Sequence[Run]) -> str:
    """Writes ``DIR/slurm/sweep.sbatch`` (atomically, :mod:`mcjax.safe_files`); returns
    its path. Raises as :func:`script`."""
    text = script(sweep, runs)
    folder = os.path.join(sweep.workdir, "slurm")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "sweep.sbatch")
    safe_files.write_text(path, text, mode=0o755)
    return path


def submit(path: str, sbatch_args: Sequence[str] = ()) -> str:
    """``sbatch [sbatch_args] path``; returns sbatch's output (the job id line).

    Raises:
      SubmitError: one sentence: ``sbatch`` is not installed or cannot be run, or it
        refused the job (with its own message, the reason).
    """
    again = shlex.join(["sbatch", *sbatch_args, path])
    try:
        done = subprocess.run(
            ["sbatch", *sbatch_args, path], capture_output=True, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise SubmitError(
            f"sbatch is not on PATH (is SLURM here?); the script is written: submit it on a "
            f"SLURM login node with: {shown(again)}"
        ) from None
    except OSError as error:
        raise SubmitError(f"cannot run sbatch ({error.strerror}): {shown(again)}") from None
    if done.returncode != 0:
        reason = " ".join((done.stderr.strip() or done.stdout.strip() or "no message").split())
        raise SubmitError(
            f"sbatch refused the job (exit {done.returncode}): {shown(reason, 500)}; "
            f"fix that and submit it with: {shown(again)}"
        )
    return done.stdout.strip()
