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
import shlex
import subprocess
from collections.abc import Sequence

from mcjax.sweeps.plan import Run, Sweep

SBATCH = pathlib.Path(__file__).resolve().parent.parent.parent / "launch" / "slurm.sbatch"

_HEADER = """#!/usr/bin/env bash
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
#SBATCH --output={logs}/%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --chdir={cwd}
set -euo pipefail
: "${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch}}"
case $SLURM_ARRAY_TASK_ID in
"""


def _quote(arg: str) -> str:
    """Always single-quoted (a bare comma in an array element reads as a mistake)."""
    return "'" + arg.replace("'", "'\"'\"'") + "'"


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


def script(sweep: Sweep, runs: Sequence[Run], *, sbatch_path: str | os.PathLike = SBATCH) -> str:
    """The array job's script; tasks are the indices of ``runs`` that have not finished.

    Raises:
      ValueError: when every run has finished (nothing to submit).
    """
    todo = [i for i, run in enumerate(runs) if run.status() != "finished"]
    if not todo:
        raise ValueError(f"every run of {sweep.workdir} has finished; nothing to submit")
    text = _HEADER.format(
        total=len(runs),
        script=shlex.quote(os.path.join(sweep.workdir, "slurm", "sweep.sbatch")),
        workdir=shlex.quote(sweep.workdir),
        job_name=f"sweep-{os.path.basename(os.path.normpath(sweep.workdir))}"[:64],
        array=array_spec(todo),
        logs=os.path.join(sweep.workdir, "slurm"),
        cwd=os.getcwd(),
    )
    for index, run in enumerate(runs):
        args = " ".join(_quote(a) for a in run.main_args(sweep))
        text += f"  {index}) args=({args}) ;;  # {run.name}\n"
    text += '  *) echo "no run $SLURM_ARRAY_TASK_ID in this sweep" >&2; exit 2 ;;\nesac\n'
    text += f'exec bash {shlex.quote(str(sbatch_path))} "${{args[@]}}"\n'
    return text


def write(sweep: Sweep, runs: Sequence[Run]) -> str:
    """Writes ``DIR/slurm/sweep.sbatch``; returns its path."""
    folder = os.path.join(sweep.workdir, "slurm")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "sweep.sbatch")
    with open(path, "w") as f:
        f.write(script(sweep, runs))
    os.chmod(path, 0o755)
    return path


def submit(path: str, sbatch_args: Sequence[str] = ()) -> str:
    """``sbatch [sbatch_args] path``; returns sbatch's output (the job id line).

    Raises:
      OSError: when ``sbatch`` is not installed; ``subprocess.CalledProcessError`` when
        it refuses the job.
    """
    done = subprocess.run(
        ["sbatch", *sbatch_args, path], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()
