"""Live blocks per module, like the paper's Figures 4 and 5.

Example::

    plot_active_branches({"K=1": live_k1, "K=4": live_k4}, "branches.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mcjax.figures._common import as_live as _as_live
from mcjax.figures._common import save as _save

__all__ = ["plot_active_branches"]


def plot_active_branches(
    live: Sequence | Mapping[str, Sequence],
    path,
    *,
    title: str | None = None,
    labels: str | Sequence[str] | None = None,
) -> None:
    """Plots the number of live blocks per module, like the paper's Figures 4 and 5.

    Args:
      live: one run's ``L`` bool vectors ``[C_i]`` (see :func:`mcjax.prune.live_blocks`), or
        a dict ``label -> live`` to overlay several runs (e.g. ``{"K=1": ..., "K=4": ...}``).
      path: where to write the PNG.
      title: figure title (default "Active branches per module").
      labels: legend label(s): a string for a single run, or one per run (in the dict's
        order) to replace the dict's keys.

    The x axis is the module index ``1..L``, the y axis the number of active branches,
    from 0 to the largest cardinality ``C`` (drawn as a dotted line).

    Raises:
      ValueError: on an empty ``live``, a vector that is not 1-D, or a wrong number of labels.
    """
    if isinstance(live, Mapping):
        if not live:
            raise ValueError("live is an empty dict")
        runs = {str(k): _as_live(v, f"live[{k!r}]") for k, v in live.items()}
        names = list(runs)
        if labels is not None:
            if isinstance(labels, str) or len(labels) != len(names):
                raise ValueError(f"labels must give one label per run ({len(names)})")
            names = [str(x) for x in labels]
        series = list(zip(names, runs.values(), strict=True))
    else:
        if labels is not None and not isinstance(labels, str):
            if len(labels) != 1:
                raise ValueError("a single run takes a single label")
            labels = str(labels[0])
        series = [(labels, _as_live(live))]

    c_max = max(v.size for _, run in series for v in run)
    n_max = max(len(run) for _, run in series)
    fig = Figure(figsize=(max(6.0, min(12.0, 3.0 + 0.22 * n_max)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for n, (name, run) in enumerate(series):
        x = np.arange(1, len(run) + 1)
        y = np.array([int(v.sum()) for v in run])
        ax.plot(
            x,
            y,
            marker=markers[n % len(markers)],
            markersize=6 if len(run) <= 40 else 4,
            linewidth=1.6,
            label=name,
            clip_on=False,
            zorder=3,
        )
    sizes_run = max((run for _, run in series), key=len)
    caps = np.array([v.size for v in sizes_run])
    if np.all(caps == c_max):
        ax.axhline(c_max, color="0.5", linestyle=":", linewidth=1.0, label=f"C = {c_max}")
    else:  # modules of different cardinality
        ax.step(
            np.arange(1, len(caps) + 1),
            caps,
            where="mid",
            color="0.5",
            linestyle=":",
            linewidth=1.0,
            label="all blocks",
        )
    ax.set_xlim(0.5, n_max + 0.5)
    ax.set_ylim(0, c_max * 1.06)  # 0..C, with room for the markers at C
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_max, 20)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(c_max, 10)))
    ax.set_xlabel("module index (input → output)")
    ax.set_ylabel("number of active branches")
    ax.grid(True, alpha=0.3)
    ax.set_title(title if title is not None else "Active branches per module")
    if len(series) > 1 or series[0][0] is not None:
        ax.legend(loc="best", fontsize=9)
    _save(fig, path)
