"""Everything a sweep leaves in its directory after (or without) running: ``results.json``,
``table.md`` and the figures ``accuracy_vs_fan_in.png`` (when K is a grid axis),
``active_branches.png`` (mean over seeds, per grid point with masks) and
``learning_curves.png`` (every run)."""

from __future__ import annotations

import os

from absl import logging

from mcjax.sweeps import aggregate
from mcjax.sweeps.plan import Run, Sweep
from mcjax.training.metric_writers import read_records


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
        figures.plot_accuracy_vs_fan_in(by_k, path, reference=reference)
        written.append(path)

    masked = [row for row in rows if row["connectivity"] != "full"]
    if masked:
        path = os.path.join(workdir, "active_branches.png")
        figures.plot_mean_active_branches(
            {_label(row): row["live_blocks_per_module"] for row in masked},
            path,
            cardinality=max(row["cardinality"] for row in masked),
        )
        written.append(path)

    labels = {tuple(row["overrides"].items()): _label(row) for row in results["rows"]}
    curves = []
    for run in results["runs"]:
        metrics = os.path.join(run["workdir"], "metrics.jsonl")
        if os.path.exists(metrics):
            curves.append((labels[tuple(run["overrides"].items())], read_records(metrics)))
    if curves:
        path = os.path.join(workdir, "learning_curves.png")
        figures.plot_sweep_learning_curves(curves, path)
        written.append(path)
    return written


def report(sweep: Sweep, runs: list[Run], notes: list[str] = ()) -> str:
    """Writes ``results.json``, ``table.md`` and the figures; returns the table."""
    results, text = aggregate.write(sweep, runs, notes)
    try:
        write_figures(results, sweep.workdir)
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency
        logging.warning("no sweep figures: %s", error)
    return text
