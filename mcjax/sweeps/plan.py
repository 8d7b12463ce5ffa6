"""A sweep's specification, its runs, and ``DIR/sweep.json``.

:func:`plan` resolves every run's config before anything runs and raises one
:class:`~mcjax.sweeps.resolve.SweepError` listing every problem: an unknown field, a bad
value, two runs with one name, a name or path the file system cannot hold, a sweep
larger than its bound, or a run directory trained with another config.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

from mcjax import safe_files
from mcjax.architectures import get_architecture
from mcjax.sweeps import grid
from mcjax.sweeps.resolve import (
    SweepError,
    canonical_value,
    differences,
    load_config,
    missing_field,
    read_json,
    shown,
)
from mcjax.training import config as training_config

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"

# The most runs a sweep plans unless asked for more (``--max_runs``): far above the
# paper's tables (32 runs for Table 1) and small enough to plan in about a second.
MAX_RUNS = 10_000

# Room kept below a run's directory for the paths of the files a run writes there
# (orbax's temporary checkpoint paths are the longest, about 120 bytes).
_RESERVED_PATH_BYTES = 256

# A finished run's summary.json has these (mcjax.training.outputs), as numbers or,
# for the last, a list; without them the run has not finished (a truncated write).
_SUMMARY_FIELDS = {
    "test_accuracy": (int, float),
    "params_train": (int, float),
    "params_test": (int, float),
    "live_blocks_per_module": list,
}


@dataclasses.dataclass
class Sweep:
    """What ``python -m mcjax.sweep`` was asked to run.

    Attributes:
      workdir: the sweep's directory; each run is a subdirectory.
      config: the config file every run starts from.
      overrides: ``{field: value}`` applied to every run (before the grid point's).
      axes: the grid (:mod:`mcjax.sweeps.grid`).
      seeds: ``config.seed`` of the runs of each grid point (a ``range`` is fine: it is
        not materialised before the sweep's size is checked).
      experiments: the presets it came from (for the paper's column), may be empty.
    """

    workdir: str
    config: str
    overrides: dict[str, str]
    axes: list[grid.Axis]
    seeds: Sequence[int]
    experiments: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: a grid point (only the fields that apply to it) and a seed.

    ``describe``: ``dataset``, ``arch``, ``connectivity``, ``fan_in`` (``None`` for
    ``full``) and ``cardinality`` of the resolved config, for the table.
    """

    name: str
    overrides: dict[str, str]
    seed: int
    workdir: str
    describe: dict

    def main_args(self, sweep: Sweep) -> list[str]:
        """The arguments of ``python -m mcjax.main`` for this run (one flag per field)."""
        fields = {**sweep.overrides, **self.overrides}
        return [
            f"--config={sweep.config}",
            f"--workdir={self.workdir}",
            *[f"--config.{field}={value}" for field, value in fields.items()],
            f"--config.seed={self.seed}",
        ]

    def status(self) -> str:
        """``finished`` (a readable ``summary.json``), ``interrupted`` (started) or ``new``.

        A ``summary.json`` that is empty, truncated or not a run's summary does not
        count: the run is rerun (it resumes from its last checkpoint and writes it again).
        """
        if read_summary(self.workdir) is not None:
            return "finished"
        if os.path.lexists(os.path.join(self.workdir, "config.json")):
            return "interrupted"
        return "new"


def read_summary(run_workdir: str) -> dict | None:
    """The run's ``summary.json``, or ``None`` when it is missing or not a finished run's
    summary (unreadable, empty, truncated, or without the fields the table needs)."""
    try:
        summary = read_json(os.path.join(run_workdir, SUMMARY_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    for field, kind in _SUMMARY_FIELDS.items():
        value = summary.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None
    return summary


def _describe(config) -> dict:
    arch = str(config.model.arch).replace(" ", "").strip("{}")
    return {
        "dataset": str(config.data.name),
        "arch": arch,
        "connectivity": str(config.model.connectivity),
        "fan_in": None if config.model.connectivity == "full" else int(config.model.fan_in),
        "cardinality": get_architecture(arch).modules[-1].cardinality,
    }


def _limits(path: str) -> tuple[int, int]:
    """``NAME_MAX`` and ``PATH_MAX`` of the file system that holds (or will hold) ``path``."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    limits = []
    for name, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits.append(int(os.pathconf(probe, name)))
        except (OSError, ValueError, AttributeError):
            limits.append(default)
    return limits[0], limits[1]


def workdir_problems(workdir: str) -> list[str]:
    """Why the file system cannot hold the sweep directory ``workdir`` and its runs."""
    name_max, path_max = _limits(workdir)
    absolute = os.path.abspath(workdir)
    for part in absolute.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            return [
                f"--workdir {shown(workdir)}: its component {shown(part, 40)} is "
                f"{len(os.fsencode(part))} bytes, more than the {name_max} the file "
                "system allows in a name"
            ]
    size = len(os.fsencode(absolute))
    if size + _RESERVED_PATH_BYTES > path_max:
        return [
            f"--workdir {shown(workdir)} is {size} bytes as an absolute path; with room "
            f"for the runs in it that is past the {path_max} bytes the file system "
            "allows in a path: use a shorter --workdir"
        ]
    return []


def _run_path_problem(run_name: str, run_workdir: str, limits: tuple[int, int]) -> str | None:
    name_max, path_max = limits
    size = len(os.fsencode(run_name))
    if size > name_max:
        return (
            f"run {shown(run_name, 60)}: its directory name is {size} bytes, more than the "
            f"{name_max} the file system allows; use shorter grid values"
        )
    size = len(os.fsencode(os.path.abspath(run_workdir)))
    if size + _RESERVED_PATH_BYTES > path_max:
        return (
            f"run {shown(run_name, 60)}: its directory is {size} bytes as an absolute path; "
            f"with room for the files a run writes in it that is past the {path_max} bytes "
            "the file system allows in a path: use a shorter --workdir or grid values"
        )
    return None


def size_text(runs: int, points: int, seeds: int) -> str:
    """``"8 runs (2 grid points x 4 seeds)"``."""

    def count(n: int, what: str) -> str:
        return f"{n:,} {what}{'s' if n != 1 else ''}"

    return f"{count(runs, 'run')} ({count(points, 'grid point')} x {count(seeds, 'seed')})"


def _too_many(runs: int, points: int, seeds: int, max_runs: int, *, exact: bool) -> SweepError:
    return SweepError(
        f"the sweep has {'' if exact else 'up to '}{size_text(runs, points, seeds)}, more "
        f"than --max_runs={max_runs}; pass --max_runs={runs} to plan them all"
    )


def plan(
    sweep: Sweep,
    *,
    max_runs: int = MAX_RUNS,
    announce: Callable[[int, int, int], None] | None = None,
) -> list[Run]:
    """The runs of ``sweep``, in order: grid points (the last axis fastest) x seeds.

    A grid value that does not apply to a point (``model.fan_in`` for ``full``) is left
    out of its overrides and name, and values that parse to the same config value
    (``2``, ``02``, ``+2``) are one value, so each distinct run is planned once.

    The size is bounded before anything is materialised: more than ``max_runs`` seeds
    or grid points (before the values that do not apply are taken out) is refused
    before any config is resolved; otherwise the points are resolved, the number of
    runs is passed to ``announce(runs, points, seeds)`` and refused past ``max_runs``,
    and only then are the runs made.

    Raises:
      SweepError: every problem found, one sentence each.
    """
    problems = workdir_problems(sweep.workdir)
    if problems:
        raise SweepError(problems)
    seeds, upper = len(sweep.seeds), math.prod(len(axis) for axis in sweep.axes)
    if seeds > max_runs or upper > max_runs:
        raise _too_many(seeds * upper, upper, seeds, max_runs, exact=upper == 1)

    base = load_config(sweep.config, {})
    fields = list(dict.fromkeys(f for axis in sweep.axes for point in axis for f in point))
    problems = [
        f"{'--grid seed=...' if field in fields else '--config.seed'}: seeds are set by --seeds"
        for field in dict.fromkeys([*fields, *sweep.overrides])
        if field == "seed"
    ]
    problems += [
        f"{'--grid ' + field + '=...' if field in fields else '--config.' + field}: {why}"
        for field in dict.fromkeys([*fields, *sweep.overrides])
        if field != "seed" and (why := missing_field(base, field))
    ]
    if problems:
        raise SweepError(problems)
    load_config(sweep.config, sweep.overrides)  # the values parse
    try:
        points = grid.expand(sweep.axes)
    except ValueError as error:
        raise SweepError(str(error)) from None

    names = grid.short_names(fields)
    kept: dict[tuple, tuple[dict, object]] = {}
    for point in points:
        try:
            config = load_config(sweep.config, {**sweep.overrides, **point})
        except SweepError as error:
            problems += error.problems
            continue
        applicable = {f: v for f, v in point.items() if grid.applies(f, config)}
        # By the parsed value: "2", "02" and "+2" are one run.
        key = tuple((f, canonical_value(config, f)) for f in applicable)
        if key in kept:
            continue
        try:
            training_config.from_config_dict(config, num_devices=1)
        except training_config.ConfigError as error:
            label = grid.run_name(applicable, 0, names).rsplit(",seed=", 1)[0] or "the config"
            problems += [f"{label}: {p}" for p in error.problems]
            continue
        kept[key] = (applicable, config)
    if problems:
        raise SweepError(list(dict.fromkeys(problems)))
    count = len(kept) * seeds
    if announce is not None:
        announce(count, len(kept), seeds)
    if count > max_runs:
        raise _too_many(count, len(kept), seeds, max_runs, exact=True)

    runs, seen, limits, too_long = [], {}, _limits(sweep.workdir), []
    for applicable, config in kept.values():
        for seed in sweep.seeds:
            name = grid.run_name(applicable, seed, names)
            if name in seen:
                problems.append(
                    f"two grid points give the run name {name}: {seen[name]} and {applicable}"
                )
            seen[name] = applicable
            run = Run(name, applicable, seed, os.path.join(sweep.workdir, name), _describe(config))
            runs.append(run)
            why = _run_path_problem(name, run.workdir, limits)
            if why is not None:
                too_long.append(why)
                continue
            saved = os.path.join(run.workdir, "config.json")
            if os.path.lexists(saved):
                config.seed = seed
                problems += _saved_config_problems(saved, run, config)
    if too_long:
        more = len(too_long) - 3
        problems += too_long[:3] + ([f"... and {more} more runs like these"] if more > 0 else [])
    if problems:
        raise SweepError(problems)
    return runs


def _saved_config_problems(saved: str, run: Run, config) -> list[str]:
    advice = "use a new --workdir or delete that run"
    try:
        before = read_json(saved)
    except (OSError, ValueError) as error:
        return [f"{shown(saved)} cannot be read ({shown(str(error), 80)}); {advice}"]
    if not isinstance(before, dict):
        return [f"{shown(saved)} does not hold a config; {advice}"]
    changed = differences(before, config)
    if changed:
        return [
            f"{shown(run.workdir)} holds a run of another config ({'; '.join(changed[:3])}); "
            + advice
        ]
    return []


def to_json(sweep: Sweep, runs: list[Run]) -> dict:
    return {
        **dataclasses.asdict(dataclasses.replace(sweep, seeds=[])),
        "seeds": list(sweep.seeds),
        "runs": [dataclasses.asdict(run) for run in runs],
    }


def write(sweep: Sweep, runs: list[Run]) -> str:
    """Writes ``DIR/sweep.json`` (atomically, :mod:`mcjax.safe_files`); returns its path."""
    os.makedirs(sweep.workdir, exist_ok=True)
    path = os.path.join(sweep.workdir, SWEEP_FILE)
    safe_files.write_json(path, to_json(sweep, runs), indent=1)
    return path


_SWEEP_FIELDS = {
    "config": str,
    "overrides": dict,
    "axes": list,
    "seeds": list,
    "experiments": list,
    "runs": list,
}
_RUN_FIELDS = {"name": str, "overrides": dict, "seed": int, "describe": dict}
_DESCRIBE_FIELDS = ("dataset", "arch", "connectivity", "fan_in", "cardinality")


def read(workdir: str) -> tuple[Sweep, list[Run]]:
    """The sweep and runs saved in ``workdir/sweep.json``.

    Raises:
      SweepError: when there is none, or it cannot be read or is not a sweep's (empty,
        truncated, edited): one sentence.
    """
    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.lexists(path):
        raise SweepError(f"{shown(path)} does not exist: {shown(workdir)} is not a sweep directory")
    broken = f"{shown(path)} is not a sweep's plan"
    advice = "run the sweep's command again (without --report) to write it again"
    try:
        saved = read_json(path)
    except (OSError, ValueError) as error:
        raise SweepError(f"{broken} ({shown(str(error), 80)}); {advice}") from None
    if not isinstance(saved, dict) or any(
        not isinstance(saved.get(k), kind) for k, kind in _SWEEP_FIELDS.items()
    ):
        raise SweepError(f"{broken} (a field is missing or of the wrong type); {advice}")
    runs = []
    for entry in saved.pop("runs"):
        if (
            not isinstance(entry, dict)
            or any(not isinstance(entry.get(k), kind) for k, kind in _RUN_FIELDS.items())
            or any(k not in entry["describe"] for k in _DESCRIBE_FIELDS)
        ):
            raise SweepError(f"{broken} (a run is incomplete); {advice}")
        # Paths under the directory as given now, so that a sweep directory can be moved.
        fields = {k: entry[k] for k in _RUN_FIELDS}
        runs.append(Run(**fields, workdir=os.path.join(workdir, entry["name"])))
    sweep = Sweep(workdir=workdir, **{k: saved[k] for k in _SWEEP_FIELDS if k != "runs"})
    return sweep, runs
