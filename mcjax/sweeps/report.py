"""Everything a sweep leaves in its directory after (or without) running: ``results.json``,
``table.md`` and the figures ``accuracy_vs_fan_in.png`` (when K is a grid axis),
``active_branches.png`` (mean over seeds, per grid point with masks) and
``learning_curves.png`` (every run)."""

from __future__ import annotations

import os
import tempfile

from absl import logging

from mcjax import safe_files
from mcjax.sweeps import aggregate
from mcjax.sweeps.plan import Run, Sweep
from mcjax.sweeps.resolve import shown
from mcjax.training.metrics import read_records


def _label(row: dict, without: tuple[str, ...] = ()) -> str:
    parts = [row["arch"], aggregate.LABELS.get(row["connectivity"], row["connectivity"])]
    if row["fan_in"] is not None and "model.fan_in" not in without:
        parts.append(f"K={row['fan_in']}")
    parts += [
        f"{field.rsplit('.', 1)[-1]}={value}"
        for field, value in row["overrides"].items()
        if field not in (*aggregate.OWN_COLUMNS, *without)
    ]
    return " ".join(parts)


def _save(plot, series, path: str, **kwargs) -> None:
    """``plot(series, path, **kwargs)`` written through :mod:`mcjax.safe_files`: drawn in
    a private directory (created exclusively, mode 0700: nothing can be planted in it),
    then put in place atomically, replacing a link at ``path`` rather than its target."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path) or ".") as private:
        scratch = os.path.join(private, os.path.basename(path))
        plot(series, scratch, **kwargs)
        with open(scratch, "rb") as f:
            data = f.read()
    safe_files.write_bytes(path, data)


def _curves(run: dict) -> list[dict] | None:
    """The records of a run's ``metrics.jsonl``; ``None`` when it cannot be read."""
    metrics = os.path.join(run["workdir"], "metrics.jsonl")
    if not os.path.isfile(metrics):
        return None
    try:
        return read_records(metrics)
    except OSError:
        return None


def write_figures(results: dict, workdir: str) -> list[str]:
    """Writes the sweep's figures; returns their paths."""
    from mcjax import figures  # matplotlib only when figures are made

    rows = [row for row in results["rows"] if row["n"]]
    written = []
    by_k: dict[str, dict[int, list[float]]] = {}
    reference: dict[str, list[float]] = {}
    for row in rows:
        values = [v / 100 for v in row["top1"]["values"]]
        if row["fan_in"] is None:
            reference[_label(row)] = values
        elif "model.fan_in" in row["overrides"]:
            by_k.setdefault(_label(row, ("model.fan_in",)), {})[row["fan_in"]] = values
    if len({k for series in by_k.values() for k in series}) >= 2:
        path = os.path.join(workdir, "accuracy_vs_fan_in.png")
        _save(figures.plot_accuracy_vs_fan_in, by_k, path, reference=reference)
        written.append(path)

    masked = [row for row in rows if row["connectivity"] != "full"]
    if masked:
        path = os.path.join(workdir, "active_branches.png")
        _save(
            figures.plot_mean_active_branches,
            {_label(row): row["live_blocks_per_module"] for row in masked},
            path,
            cardinality=max(row["cardinality"] for row in masked),
        )
        written.append(path)

    labels = {tuple(row["overrides"].items()): _label(row) for row in results["rows"]}
    curves = []
    for run in results["runs"]:
        records = _curves(run)
        if records is not None:
            curves.append((labels[tuple(run["overrides"].items())], records))
    if curves:
        path = os.path.join(workdir, "learning_curves.png")
        _save(figures.plot_sweep_learning_curves, curves, path)
        written.append(path)
    return written


def report(sweep: Sweep, runs: list[Run], notes: list[str] = ()) -> str:
    """Writes ``results.json``, ``table.md`` and the figures; returns the table."""
    results, text = aggregate.write(sweep, runs, notes)
    try:
        write_figures(results, sweep.workdir)
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency
        logging.warning("no sweep figures: %s", error)
    except (ValueError, TypeError) as error:  # a summary.json edited into nonsense
        logging.warning("no sweep figures: %s", shown(str(error)))
    return text
