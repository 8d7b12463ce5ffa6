"""Figures of a sweep (many runs aggregated over seeds): accuracy against the fan-in K
(the paper's Figure 2), mean active branches per module (Figure 4), and the learning
curves of every run on one plot.

Accuracies are fractions in ``[0, 1]`` and are drawn in percent; error bars are the
sample standard deviation over the seeds (none for a single seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mcjax.figures._common import save as _save
from mcjax.figures.curves import phase_ends, x_coordinates

__all__ = ["plot_accuracy_vs_fan_in", "plot_mean_active_branches", "plot_sweep_learning_curves"]

_MARKERS = "osD^vP*X"


def _std(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sample standard deviation (``ddof=1``); 0 for a single value."""
    if values.shape[axis] < 2:
        return np.zeros_like(np.take(values, 0, axis=axis), dtype=float)
    return values.std(axis=axis, ddof=1)


def plot_accuracy_vs_fan_in(
    series: Mapping[str, Mapping[int, Sequence[float]]],
    path,
    *,
    reference: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> None:
    """Test accuracy against K: mean over seeds with ``±`` std error bars, best as an ``x``.

    Args:
      series: ``label -> {K: accuracies of the seeds}`` (one line per label).
      path: where to write the PNG.
      reference: ``label -> accuracies`` drawn as dashed horizontal lines at their mean
        (e.g. ``Fixed-Full``, which has no K).
      title: figure title (default "Accuracy against the fan-in K").

    Raises:
      ValueError: when ``series`` has no point.
    """
    if not any(series.values()):
        raise ValueError("plot_accuracy_vs_fan_in needs at least one (K, accuracies) point")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    all_k: set[int] = set()
    for n, (label, by_k) in enumerate(series.items()):
        ks = sorted(k for k, v in by_k.items() if len(v))
        if not ks:
            continue
        all_k.update(ks)
        values = [100 * np.asarray(by_k[k], float) for k in ks]
        means = np.array([v.mean() for v in values])
        stds = np.array([_std(v) for v in values])
        (line,) = ax.plot(ks, means, marker=_MARKERS[n % len(_MARKERS)], label=label)
        ax.errorbar(ks, means, yerr=stds, fmt="none", ecolor=line.get_color(), capsize=4)
        ax.plot(ks, [v.max() for v in values], "x", color=line.get_color(), markersize=6)
    for n, (label, values) in enumerate((reference or {}).items()):
        if len(values):
            mean = 100 * float(np.mean(values))
            ax.axhline(mean, color=f"C{len(series) + n}", linestyle="--", label=f"{label} (mean)")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="x", color="0.3", linestyle="none"))
    labels.append("best of the seeds")
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_xticks(sorted(all_k))
    ax.set_xlabel("fan-in K (active branches read by each block)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title if title is not None else "Accuracy against the fan-in K")
    _save(fig, path)


def plot_mean_active_branches(
    series: Mapping[str, Sequence[Sequence[int]]],
    path,
    *,
    cardinality: int | Sequence[int],
    title: str | None = None,
) -> None:
    """Live blocks per module, averaged over the runs of each label (``±`` std).

    Args:
      series: ``label -> [runs, L]`` live-block counts per module (each run's
        ``summary.json`` ``live_blocks_per_module``).
      path: where to write the PNG.
      cardinality: ``C``, or the blocks of each module (a dotted line).
      title: figure title.

    Raises:
      ValueError: when a label has no run or runs of different module counts.
    """
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    n_modules = 0
    for n, (label, runs) in enumerate(series.items()):
        counts = np.asarray(runs, float)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError(f"{label}: need [runs, modules] counts, got shape {counts.shape}")
        n_modules = max(n_modules, counts.shape[1])
        x = np.arange(1, counts.shape[1] + 1)
        ax.errorbar(
            x,
            counts.mean(0),
            yerr=_std(counts),
            marker=_MARKERS[n % len(_MARKERS)],
            capsize=3,
            label=f"{label} (n={counts.shape[0]})",
        )
    caps = np.broadcast_to(np.asarray(cardinality), (n_modules,))
    ax.step(
        np.arange(1, n_modules + 1),
        caps,
        where="mid",
        color="0.5",
        linestyle=":",
        label="C (all blocks)",
    )
    ax.set_ylim(0, caps.max() * 1.08)
    ax.set_xlim(0.5, n_modules + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_modules, 20)))
    ax.set_xlabel("module index (input → output)")
    ax.set_ylabel("active branches (mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title if title is not None else "Active branches per module")
    _save(fig, path)


def plot_sweep_learning_curves(
    runs: Sequence[tuple[str, Sequence[Mapping]]], path, *, title: str | None = None
) -> None:
    """Training loss and test accuracy of every run against the epoch, on one figure.

    Args:
      runs: ``(label, records of metrics.jsonl)`` per run; runs with the same label (the
        seeds of one grid point) share a colour.
      path: where to write the PNG.
      title: figure title.
    """
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    colors: dict[str, str] = {}
    bounds: list = []
    for label, records in runs:
        records = [dict(r) for r in records]
        xs, xlabel = x_coordinates(records)
        color = colors.setdefault(label, f"C{len(colors) % 10}")
        for ax, key, style in (
            (loss_ax, "train/loss", {"linewidth": 1.0, "alpha": 0.7}),
            (acc_ax, "test/accuracy", {"marker": "o", "markersize": 3, "linewidth": 1.0}),
        ):
            pts = [(x, r.get(key)) for r, x in zip(records, xs, strict=True) if x is not None]
            pts = sorted((x, float(y)) for x, y in pts if isinstance(y, int | float))
            if pts:
                x, y = np.array(pts).T
                ax.plot(x, 100 * y if key == "test/accuracy" else y, color=color, **style)
            ax.set_xlabel(xlabel)
        bounds = bounds or phase_ends(records, xs)
    for ax, name in ((loss_ax, "training loss"), (acc_ax, "test accuracy (%)")):
        for x, _ in bounds:
            ax.axvline(x, color="0.35", linestyle="--", linewidth=0.8, zorder=0)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, label=label) for label, c in colors.items()]
    if handles:
        acc_ax.legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(title if title is not None else "Learning curves of every run")
    _save(fig, path)
