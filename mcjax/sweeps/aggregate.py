"""A sweep's results: ``DIR/results.json`` (every run) and ``DIR/table.md`` (one row per
grid point, the paper's format), from the runs' ``summary.json`` files.

The same whoever ran the runs (this machine, a SLURM array, by hand): only the run
directories listed in ``DIR/sweep.json`` are read. Accuracies are reported in percent as
"best (mean ± std)" over the finished seeds; std is the sample standard deviation
(``n - 1``), "–" for one seed.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mcjax import safe_files
from mcjax.sweeps import grid, paper
from mcjax.sweeps.plan import Run, Sweep, read_summary, to_json

LABELS = {"full": "Fixed-Full", "learned": "Learned", "random": "Fixed-Random", "real": "Real"}
# Display names of fields a table shows in its own columns.
OWN_COLUMNS = ("model.arch", "model.connectivity", "model.fan_in")


def _summary(run: Run) -> dict | None:
    """The run's summary, ``None`` when it has not finished (or its file is broken)."""
    return read_summary(run.workdir)


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    array = 100 * np.asarray(values, float)
    return {
        "best": float(array.max()),
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else None,
        "values": [float(v) for v in array],
    }


def collect(sweep: Sweep, runs: list[Run]) -> dict:
    """``results.json``: the sweep, every run (overrides, seed, workdir, status and the
    fields of its ``summary.json``) and one aggregated row per grid point."""
    rows: dict[tuple, dict] = {}
    run_records = []
    for run in runs:
        summary = _summary(run)
        run_records.append(
            {
                **(summary or {}),
                "name": run.name,
                "overrides": run.overrides,
                "seed": run.seed,
                "workdir": run.workdir,
                "status": run.status(),
            }
        )
        row = rows.setdefault(
            tuple(run.overrides.items()),
            {"overrides": run.overrides, **run.describe, "runs": [], "summaries": []},
        )
        row["runs"].append(run.name)
        if summary is not None:
            row["summaries"].append(summary)
    out_rows = []
    for row in rows.values():
        summaries = row.pop("summaries")
        top5 = [s.get("test_accuracy_top5") for s in summaries]
        top5 = [v for v in top5 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        found = paper.lookup(row)
        out_rows.append(
            {
                **row,
                "n": len(summaries),
                "top1": _stats([s["test_accuracy"] for s in summaries]),
                "top5": _stats(top5),
                "params_train": _mean([s["params_train"] for s in summaries]),
                "params_test": _mean([s["params_test"] for s in summaries]),
                "live_blocks_per_module": [s["live_blocks_per_module"] for s in summaries],
                "paper": None if found is None else {**vars(found), "top1": found.top1()},
            }
        )
    return {"sweep": to_json(sweep, runs), "runs": run_records, "rows": out_rows}


def _mean(values):
    return float(np.mean(values)) if values else None


def _params(count: float | None) -> str:
    if count is None:
        return "–"
    return f"{count / 1e6:.1f}M" if count >= 1e7 else f"{count / 1e6:.2f}M"


def _accuracy(stats: dict | None) -> str:
    if stats is None:
        return "–"
    std = "–" if stats["std"] is None else f"{stats['std']:.2f}"
    return f"{stats['best']:.2f} ({stats['mean']:.2f} ± {std})"


def table(results: dict, notes: list[str] = ()) -> str:
    """The Markdown table of ``results`` (see :func:`collect`), notes below it."""
    rows = results["rows"]
    extra = list(dict.fromkeys(f for row in rows for f in row["overrides"] if f not in OWN_COLUMNS))
    names = grid.short_names(extra)
    with_top5 = any(row["top5"] for row in rows)
    with_paper = any(row["paper"] for row in rows)
    header = ["Architecture", "Connectivity", "K", *[names[f] for f in extra]]
    header += ["Params-Train", "Params-Test", "Top-1 (%) best (mean ± std)"]
    header += ["Top-5 (%) best (mean ± std)"] * with_top5 + ["n"]
    if with_paper:
        header += ["Paper Top-1", "Paper Params (train / test)", "Source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        k = row["cardinality"] if row["fan_in"] is None else row["fan_in"]
        cells = [row["arch"], LABELS.get(row["connectivity"], row["connectivity"]), str(k)]
        cells += [row["overrides"].get(f, "") for f in extra]
        cells += [_params(row["params_train"]), _params(row["params_test"])]
        cells += [_accuracy(row["top1"])] + [_accuracy(row["top5"])] * with_top5
        cells += [f"{row['n']}/{len(row['runs'])}"]
        if with_paper:
            found = row["paper"]
            if found is None:
                cells += ["", "", ""]
            else:
                params = (
                    f"{found['params_train']} / {found['params_test']}"
                    if found["params_train"]
                    else ""
                )
                cells += [found["top1"], params, found["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    dataset = sorted({row["dataset"] for row in rows})
    lines.append("")
    lines.append(
        f"Data: {', '.join(dataset)}. n: finished runs / runs (seeds). Top-1 in percent over "
        "the finished seeds; std is the sample standard deviation (n - 1)."
    )
    lines += [f"Note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write(sweep: Sweep, runs: list[Run], notes: list[str] = ()) -> tuple[dict, str]:
    """Writes ``results.json`` and ``table.md`` under the sweep's directory (atomically,
    :mod:`mcjax.safe_files`)."""
    results = collect(sweep, runs)
    text = table(results, notes)
    safe_files.write_text(
        os.path.join(sweep.workdir, "results.json"), json.dumps(results, indent=1)
    )
    safe_files.write_text(os.path.join(sweep.workdir, "table.md"), text)
    return results, text
