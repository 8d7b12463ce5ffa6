"""A sweep's specification, its runs, and ``DIR/sweep.json``.

:func:`plan` resolves every run's config before anything runs and raises one
:class:`~mcjax.sweeps.resolve.SweepError` listing every problem: an unknown field, a bad
value, two runs with one name, or a run directory trained with another config.
"""

from __future__ import annotations

import dataclasses
import json
import os

from mcjax.architectures import get_architecture
from mcjax.sweeps import grid
from mcjax.sweeps.resolve import SweepError, differences, load_config, missing_field
from mcjax.training import validation

SWEEP_FILE = "sweep.json"


@dataclasses.dataclass
class Sweep:
    """What ``python -m mcjax.sweep`` was asked to run.

    Attributes:
      workdir: the sweep's directory; each run is a subdirectory.
      config: the config file every run starts from.
      overrides: ``{field: value}`` applied to every run (before the grid point's).
      axes: the grid (:mod:`mcjax.sweeps.grid`).
      seeds: ``config.seed`` of the runs of each grid point.
      experiments: the presets it came from (for the paper's column), may be empty.
    """

    workdir: str
    config: str
    overrides: dict[str, str]
    axes: list[grid.Axis]
    seeds: list[int]
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
        """``finished`` (``summary.json``), ``interrupted`` (started) or ``new``."""
        if os.path.exists(os.path.join(self.workdir, "summary.json")):
            return "finished"
        if os.path.exists(os.path.join(self.workdir, "config.json")):
            return "interrupted"
        return "new"


def _describe(config) -> dict:
    arch = str(config.model.arch).replace(" ", "").strip("{}")
    return {
        "dataset": str(config.data.name),
        "arch": arch,
        "connectivity": str(config.model.connectivity),
        "fan_in": None if config.model.connectivity == "full" else int(config.model.fan_in),
        "cardinality": get_architecture(arch).modules[-1].cardinality,
    }


def plan(sweep: Sweep) -> list[Run]:
    """The runs of ``sweep``, in order: grid points (the last axis fastest) x seeds.

    A grid value that does not apply to a point (``model.fan_in`` for ``full``) is left
    out of its overrides and name, so the point is run once.

    Raises:
      SweepError: every problem found, one sentence each.
    """
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
    kept: dict[tuple, tuple[dict, dict]] = {}
    for point in points:
        try:
            config = load_config(sweep.config, {**sweep.overrides, **point})
        except SweepError as error:
            problems += error.problems
            continue
        applicable = {f: v for f, v in point.items() if grid.applies(f, config)}
        key = tuple(applicable.items())
        if key in kept:
            continue
        try:
            validation.validate_config(config, num_devices=1)
        except validation.ConfigError as error:
            label = grid.run_name(applicable, 0, names).rsplit(",seed=", 1)[0] or "the config"
            problems += [f"{label}: {p}" for p in error.problems]
            continue
        kept[key] = (applicable, config)
    if problems:
        raise SweepError(list(dict.fromkeys(problems)))

    runs, seen = [], {}
    for applicable, config in kept.values():
        for seed in sweep.seeds:
            name = grid.run_name(applicable, seed, names)
            if name in seen:
                problems.append(
                    f"two grid points give the run name {name}: {seen[name]} and {applicable}"
                )
            seen[name] = applicable
            run = Run(name, applicable, seed, os.path.join(sweep.workdir, name), _describe(config))
            saved = os.path.join(run.workdir, "config.json")
            if os.path.exists(saved):
                config.seed = seed
                with open(saved) as f:
                    changed = differences(json.load(f), config)
                if changed:
                    problems.append(
                        f"{run.workdir} holds a run of another config ({'; '.join(changed[:3])}); "
                        "use a new --workdir or delete that run"
                    )
            runs.append(run)
    if problems:
        raise SweepError(problems)
    return runs


def to_json(sweep: Sweep, runs: list[Run]) -> dict:
    return {
        **dataclasses.asdict(sweep),
        "runs": [dataclasses.asdict(run) for run in runs],
    }


def write(sweep: Sweep, runs: list[Run]) -> str:
    """Writes ``DIR/sweep.json`` (atomically); returns its path."""
    os.makedirs(sweep.workdir, exist_ok=True)
    path = os.path.join(sweep.workdir, SWEEP_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(to_json(sweep, runs), f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def read(workdir: str) -> tuple[Sweep, list[Run]]:
    """The sweep and runs saved in ``workdir/sweep.json``.

    Raises:
      SweepError: when there is none.
    """
    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.exists(path):
        raise SweepError(f"{path} does not exist: {workdir} is not a sweep directory")
    with open(path) as f:
        saved = json.load(f)
    # Paths under the directory as given now, so that a sweep directory can be moved.
    runs = [
        Run(**{**run, "workdir": os.path.join(workdir, run["name"])}) for run in saved.pop("runs")
    ]
    return Sweep(**{**saved, "workdir": workdir}), runs
