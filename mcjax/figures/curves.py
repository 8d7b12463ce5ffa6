"""The learning curves of one run (the records of its ``metrics.jsonl``).

A record logged at step ``N`` describes the steps that led to ``N``: its ``phase`` is the
phase of step ``N - 1`` and its ``lr/*`` values are the rates of that step, and the
training loop always logs a record at the last step of each phase. So a phase ends at
the largest epoch of the records that carry its number, and a learning rate holds its
value up to each record: it is drawn as a step function (``drawstyle="steps-pre"``).

Example::

    records = mcjax.training.metrics.read_records("runs/digits/metrics.jsonl")
    plot_learning_curves(records, "curves.png", title="digits")
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mcjax.figures._common import save as _save

__all__ = ["learning_curves_figure", "phase_ends", "plot_learning_curves", "x_coordinates"]


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def x_coordinates(records: Sequence[Mapping]) -> tuple[list[float | None], str]:
    """Per record, its x coordinate, and the axis label (``"epoch"`` or ``"step"``).

    A record without ``epoch`` gets one from its ``step``, scaled by the latest record
    having both; with no ``epoch`` anywhere, the x axis is the step.
    """
    has_epoch = [r for r in records if _num(r.get("epoch")) is not None]
    if not has_epoch:
        return [_num(r.get("step")) for r in records], "step"
    both = [(r["step"], r["epoch"]) for r in has_epoch if _num(r.get("step"))]
    ratio = None
    if both:
        step, epoch = max(both)
        ratio = epoch / step if step else None
    xs = []
    for r in records:
        e = _num(r.get("epoch"))
        s = _num(r.get("step"))
        xs.append(e if e is not None else (s * ratio if s is not None and ratio else None))
    return xs, "epoch"


def phase_ends(
    records: Sequence[Mapping], xs: Sequence[float | None]
) -> list[tuple[float, object]]:
    """``(x, next_phase)`` at the end of every phase but the last one.

    A phase ends at the largest x of the records carrying its number (see the module
    docstring); phases are ordered by their first record.
    """
    spans: dict = {}
    for r, x in zip(records, xs, strict=True):
        phase = r.get("phase")
        if x is None or phase is None:
            continue
        lo, hi, _ = spans.get(repr(phase), (x, x, phase))
        spans[repr(phase)] = (min(lo, x), max(hi, x), phase)
    ordered = sorted(spans.values(), key=lambda span: span[0])
    return [(hi, nxt[2]) for (_, hi, _), nxt in itertools.pairwise(ordered)]


def _first_phase(records, xs):
    pts = [(x, r.get("phase")) for r, x in zip(records, xs, strict=True) if x is not None]
    pts = [p for p in pts if p[1] is not None]
    return min(pts, key=lambda p: p[0])[1] if pts else None


def _series(records, xs, key) -> tuple[np.ndarray, np.ndarray]:
    pts = [(x, _num(r.get(key))) for r, x in zip(records, xs, strict=True)]
    pts = sorted((x, y) for x, y in pts if x is not None and y is not None)
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.array(pts, float)
    return a[:, 0], a[:, 1]


def _panels(keys: set[str], series) -> list[tuple[str, list[str], str | None]]:
    panels = []
    loss = [k for k in ("train/loss", "test/loss") if k in keys]
    acc = [k for k in ("train/accuracy", "test/accuracy") if k in keys]
    lrs = sorted(k for k in keys if k.startswith("lr/"))
    if loss:
        panels.append(("loss", loss, None))
    if acc:
        panels.append(("accuracy", acc, None))
    if lrs:
        panels.append(("learning rate", lrs, None))
    if "masks/entropy" in keys or "masks/changed" in keys:
        left = ["masks/entropy"] if "masks/entropy" in keys else []
        right = "masks/changed" if "masks/changed" in keys else None
        panels.append(("masks", left, right))
    return [
        p for p in panels if any(series[k][0].size for k in p[1]) or (p[2] and series[p[2]][0].size)
    ]


def _mark_phases(ax, twin, bounds, first, lo) -> None:
    """A dashed line where each phase ends; every phase named at its start."""
    if not bounds:
        return
    for a in (ax, twin):  # headroom for the labels
        if a is not None:
            y0, y1 = a.get_ylim()
            a.set_ylim(y0, y1 + 0.07 * (y1 - y0))
    marks = [(x, phase, True) for x, phase in bounds]
    if first is not None:
        marks.insert(0, (lo, first, False))
    for x, phase, line in marks:
        if line:
            ax.axvline(x, color="0.35", linestyle="--", linewidth=1.0, zorder=0)
        ax.annotate(
            f"phase {phase}",
            xy=(x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7.5,
            color="0.25",
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
        )


def learning_curves_figure(records: Sequence[Mapping], *, title: str | None = None) -> Figure:
    """The figure of :func:`plot_learning_curves` (for callers that add to it or test it)."""
    records = [dict(r) for r in records]
    xs, xlabel = x_coordinates(records)
    keys = {k for r in records for k in r}
    series = {k: _series(records, xs, k) for k in keys}
    panels = _panels(keys, series)
    if not panels:
        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics to plot", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        if title:
            fig.suptitle(title)
        return fig

    n = len(panels)
    ncols, nrows = (2, 2) if n == 4 else (n, 1)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = {"train": dict(linewidth=1.2, alpha=0.85), "test": dict(marker="o", markersize=3.5)}
    colors = {"train": "tab:blue", "test": "tab:orange"}
    twins = {}
    for ax, (name, left_keys, right_key) in zip(axes, panels, strict=True):
        for k in left_keys:
            x, y = series[k]
            if not x.size:
                continue
            kind, _, rest = k.partition("/")
            kw = dict(styles.get(kind, {"linewidth": 1.4}))
            if kind in colors:
                kw["color"] = colors[kind]
            if kind == "lr":
                # Each value is the rate of the steps up to its record; from the start.
                if x[0] > 0:
                    x, y = np.concatenate([[0.0], x]), np.concatenate([y[:1], y])
                kw["drawstyle"] = "steps-pre"
            elif x.size == 1:
                kw.setdefault("marker", "o")
            label = {"lr": f"lr ({rest})", "masks": rest}.get(kind, kind)
            ax.plot(x, y, label=label, **kw)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if name == "accuracy":
            top = max((series[k][1].max() for k in left_keys if series[k][1].size), default=0)
            ax.set_ylabel("accuracy" + (" (%)" if top > 1.0 else ""))
        else:
            ax.set_ylabel("mean mask entropy" if name == "masks" and left_keys else name)
        handles, labels = ax.get_legend_handles_labels()
        if right_key and series[right_key][0].size:
            x, y = series[right_key]
            twin = twins[ax] = ax.twinx()
            twin.plot(
                x,
                y,
                color="tab:purple",
                linewidth=1.0,
                alpha=0.7,
                marker="." if x.size < 60 else None,
                label="changed (right)",
            )
            twin.set_ylabel("masks/changed")
            twin.yaxis.set_major_locator(MaxNLocator(integer=True))
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="best")

    # One x range for all panels (some metrics exist only in some phases).
    plotted = [k for _, left_keys, right_key in panels for k in [*left_keys, right_key] if k]
    all_x = np.concatenate([series[k][0] for k in plotted] + [np.zeros(0)])
    lo, hi = float(all_x.min()), float(all_x.max())
    if any(k.startswith("lr/") for k in plotted):
        lo = min(lo, 0.0)  # the rates are drawn from the start of training
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    bounds = phase_ends(records, xs)
    first = _first_phase(records, xs)
    for ax in axes:
        ax.set_xlim(lo - pad, hi + pad)
        _mark_phases(ax, twins.get(ax), bounds, first, lo)
    if title:
        fig.suptitle(title)
    return fig


def plot_learning_curves(records: Sequence[Mapping], path, *, title: str | None = None) -> None:
    """Plots the metrics of a run (records of ``metrics.jsonl``) against the epoch.

    Panels (each only when some record has its keys): loss (``train/loss``,
    ``test/loss``), accuracy (``train/accuracy``, ``test/accuracy``), learning rates
    (every ``lr/*`` key, as steps) and masks (``masks/entropy``; ``masks/changed`` on a
    right axis). A dashed vertical line marks where each phase ends (see the module
    docstring). With no plottable data the PNG says so.

    Args:
      records: dicts with ``step``, ``epoch``, ``phase`` and metric keys; any may be missing.
      path: where to write the PNG.
      title: figure title.
    """
    _save(learning_curves_figure(records, title=title), path)
