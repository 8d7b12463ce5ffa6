r"""Runs a grid of mcjax runs over seeds and aggregates them like the paper's tables.

    python -m mcjax.sweep --config configs/digits.py --workdir runs/sweep --seeds 4 \
        --grid model.connectivity=full,learned,random --grid model.fan_in=1,4
    python -m mcjax.sweep --experiment table1 --config configs/cifar100.py \
        --config.data.data_dir=DIR --workdir runs/table1
    python -m mcjax.sweep --workdir runs/sweep --report        # aggregate again, run nothing

Every run is an ordinary ``python -m mcjax.main`` workdir under ``--workdir``, named after
its grid values and seed (``connectivity=learned,fan_in=4,seed=0``); the runs go one
after another on this machine (``--launcher local``) or as a SLURM array job
(``--launcher slurm [--submit]``). The same command again skips finished runs and
resumes an interrupted one. ``--grid FIELD=V1,V2`` values are split on the commas
outside brackets (``--grid 'model.arch={20,4,8},{29,8,8}'``); a value that does not
apply to a run (``model.fan_in`` for ``full``) is not multiplied. ``--config.FIELD=VALUE``
applies to every run. ``--experiment`` fills in the paper's grids (see
:mod:`mcjax.sweeps.presets`); the table then has the paper's numbers beside ours.

The number of runs is printed before they are made; past ``--max_runs`` (default
10,000) the sweep is refused. One sweep at a time per directory (``DIR/.sweep.lock``, a
lock the OS releases when the sweep dies); each run has its own lock too.

Leaves ``sweep.json``, ``results.json``, ``table.md`` (printed at the end) and figures in
``--workdir``, each written atomically. Exit statuses: 0 every run finished; 2 a bad
grid, field, value or path, a busy sweep directory, a file that cannot be written, or
``sbatch`` missing or refusing the job (one ``error:`` line each, before anything
runs where it can be found before); 75 stopped by SIGTERM/SIGINT or a run's preemption
(run the same command again); 3 / 1 some run stopped on a non-finite loss / failed
otherwise (the other runs still ran).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from mcjax.sweeps import grid, local, plan, presets, report, slurm
from mcjax.sweeps.lock import SweepLock
from mcjax.sweeps.resolve import SweepError, shown
from mcjax.training import workdir as run_workdir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mcjax.sweep",
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0].strip().splitlines()[0],
        epilog="--config.FIELD=VALUE (any number) overrides FIELD in every run.",
    )
    parser.add_argument("--config", help="config file (default: the preset's, else digits)")
    parser.add_argument(
        "--workdir", help="the sweep's directory (default: runs/EXPERIMENT, else runs/sweep)"
    )
    parser.add_argument("--seeds", type=int, help="runs per grid point, seeds 0..N-1")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="FIELD=V1,V2", help="a grid axis"
    )
    parser.add_argument(
        "--experiment",
        help=f"the paper's experiments, comma-separated: {', '.join(presets.PRESETS)}",
    )
    parser.add_argument("--report", action="store_true", help="aggregate only, run nothing")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--submit", action="store_true", help="with slurm: sbatch the job")
    parser.add_argument("--sbatch_args", default="", help="with --submit: options for sbatch")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--max_runs",
        type=int,
        default=plan.MAX_RUNS,
        help=f"refuse a sweep of more runs than this (default {plan.MAX_RUNS:,})",
    )
    return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Takes the ``--config.FIELD=VALUE`` (or ``--config.FIELD VALUE``) flags out of argv."""
    rest, overrides = [], {}
    args = iter(argv)
    for arg in args:
        if arg.startswith("--config."):
            field, sep, value = arg[len("--config.") :].partition("=")
            if not sep:
                value = next(args, None)
                if value is None:
                    raise SweepError(f"{arg} needs a value")
            overrides[field] = value
        else:
            rest.append(arg)
    return rest, overrides


def _sweep(args, overrides: dict[str, str]) -> tuple[plan.Sweep, list[str]]:
    axes: dict[str, list[str]] = {}
    for text in args.grid:
        try:
            field, values = grid.parse_grid_flag(text)
        except ValueError as error:
            raise SweepError(str(error)) from None
        axes.setdefault(field, []).extend(values)
    both = sorted(set(axes) & set(overrides))
    if both:
        raise SweepError(f"{', '.join(both)}: set by both --grid and --config.")
    config, preset_axes, notes = args.config, [], []
    names = [n.strip() for n in (args.experiment or "").split(",") if n.strip()]
    if names:
        try:
            default, axis, notes = presets.combine(names, set(axes) | set(overrides))
        except ValueError as error:
            raise SweepError(str(error)) from None
        if config is None and not default:
            raise SweepError(
                f"the experiments {', '.join(names)} use different configs: give --config"
            )
        config, preset_axes = config or default, [axis]
    seeds = args.seeds if args.seeds is not None else presets.DEFAULT_SEEDS if names else 1
    if seeds < 1:
        raise SweepError(f"--seeds must be at least 1, got {seeds}")
    if args.max_runs < 1:
        raise SweepError(f"--max_runs must be at least 1, got {args.max_runs}")
    sweep = plan.Sweep(
        workdir=args.workdir or os.path.join("runs", "+".join(names) or "sweep"),
        config=config or str(presets.CONFIGS / "digits.py"),
        overrides=overrides,
        axes=[*preset_axes, *(grid.field_axis(f, v) for f, v in axes.items())],
        seeds=range(seeds),  # a list only once the sweep's size is checked
        experiments=names,
    )
    return sweep, notes


def _notes(sweep: plan.Sweep) -> list[str]:
    return [note for name in sweep.experiments for note in presets.PRESETS[name].notes]


def _sbatch_args(args) -> list[str]:
    try:
        return shlex.split(args.sbatch_args)
    except ValueError as error:
        raise SweepError(f"--sbatch_args {shown(args.sbatch_args)}: {error}") from None


def _announce(sweep: plan.Sweep):
    def announce(runs: int, points: int, seeds: int) -> None:
        print(
            f"planning {plan.size_text(runs, points, seeds)} in {shown(sweep.workdir)}", flush=True
        )

    return announce


def _error(*problems: str) -> int:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return run_workdir.EXIT_BAD_INPUT


def _os_error(error: OSError) -> str:
    where = f" ({shown(os.fsdecode(error.filename))})" if error.filename is not None else ""
    return f"cannot write the sweep's files: {error.strerror or error}{where}"


def _launch_slurm(sweep: plan.Sweep, runs: list[plan.Run], args, sbatch_args) -> int:
    try:
        path = slurm.write(sweep, runs)
    except slurm.NothingToSubmit as error:
        print(error)
        return 0
    print(f"wrote {shown(path)}")
    if args.submit:
        print(slurm.submit(path, sbatch_args))
    else:
        print(f"submit it with: sbatch {shlex.quote(path)}")
    print(f"afterwards: python -m mcjax.sweep --workdir {shlex.quote(sweep.workdir)} --report")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    try:
        rest, overrides = _split_overrides(list(sys.argv[1:] if argv is None else argv))
        args = _parser().parse_args(rest)
        if args.report:
            if args.workdir is None:
                raise SweepError("--report needs --workdir")
            sweep, runs = plan.read(args.workdir)
            print(report.report(sweep, runs, _notes(sweep)), end="")
            return 0
        sbatch_args = _sbatch_args(args)
        sweep, notes = _sweep(args, overrides)
        if args.launcher == "slurm":  # before anything is resolved or written
            problems = slurm.problems(sweep)
            if problems:
                raise SweepError(problems)
        runs = plan.plan(sweep, max_runs=args.max_runs, announce=_announce(sweep))
        if args.dry_run:
            for run in runs:
                command = shlex.join(["python", "-m", "mcjax.main", *run.main_args(sweep)])
                print(f"{run.status():<11} {command}")
            return 0
        with SweepLock(sweep.workdir):
            plan.write(sweep, runs)
            if args.launcher == "slurm":
                return _launch_slurm(sweep, runs, args, sbatch_args)
            status = local.run_all(sweep, runs)
            table = report.report(sweep, runs, notes)
    except SweepError as error:
        return _error(*error.problems)
    except slurm.SubmitError as error:
        return _error(str(error))
    except OSError as error:
        return _error(_os_error(error))
    if status != run_workdir.EXIT_PREEMPTED:
        print(table, end="")
    return status


if __name__ == "__main__":
    sys.exit(main())
