"""Figures: learned connectivity (paper Fig. 3), active branches per module (Figs. 4-5),
learning curves.

Plain numpy / matplotlib (Agg backend, one :class:`matplotlib.figure.Figure` per call, no
``pyplot`` state); every function writes a PNG at ``path``.

Example::

    binary = [np.asarray(m) for m in mcjax.masks.top_k(params["masks"], net.fan_in)]
    live = mcjax.prune.live_blocks(binary)
    plot_connectivity(binary, live, "connectivity.png", fan_in=net.fan_in)
    plot_active_branches({"K=1": live_k1, "K=4": live_k4}, "branches.png")
    records = [json.loads(line) for line in open("metrics.jsonl")]
    plot_learning_curves(records, "curves.png")
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, FancyArrowPatch, Patch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_active_branches", "plot_connectivity", "plot_learning_curves"]

_LIVE_FACE = "#4caf50"
_LIVE_EDGE = "#1b5e20"
_DEAD_FACE = "#e6e6e6"
_DEAD_EDGE = "#9e9e9e"
_EDGE = "#263238"
_DEAD_LINE = "#c8c8c8"
_STEM = "#e53935"
_HEAD = "#1e88e5"
_DPI = 150


def _save(fig: Figure, path, dpi: float = _DPI) -> None:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=dpi)


def _as_live(live, what: str = "live") -> list[np.ndarray]:
    if live is None or isinstance(live, (str, bytes)) or len(live) == 0:
        raise ValueError(f"{what} must be a non-empty sequence of per-module bool vectors")
    out = []
    for i, v in enumerate(live):
        a = np.asarray(v)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(
                f"{what}[{i}] (module {i + 1}) must be a non-empty 1-D vector, got shape {a.shape}"
            )
        out.append(a.astype(bool))
    return out


def _live_from_binary(binary: list[np.ndarray]) -> list[np.ndarray]:
    live = [np.ones(binary[-1].shape[0], bool)]
    for mat in reversed(binary):
        live.insert(0, mat[live[0]].any(axis=0))
    return live


# --------------------------------------------------------------------------- connectivity


def plot_connectivity(
    binary: Sequence | None,
    live: Sequence | None,
    path,
    *,
    title: str | None = None,
    fan_in: int | None = None,
) -> None:
    """Draws the block connectivity of a multi-branch network, like the paper's Figure 3.

    One row of squares per module (module 1 at the top, below the red stem circle; the blue
    fully-connected head circle at the bottom). A line (with an arrowhead when there are at
    most 16 blocks per module) goes from block ``k`` of module ``i-1`` to block ``j`` of
    module ``i`` for every active connection. Live blocks are green; pruned blocks are light
    grey with a dashed grey border (and an X when the squares are large enough), and the
    connections ending in them are drawn faded and dashed.

    Args:
      binary: ``L-1`` arrays ``[C_i, C_{i-1}]`` (non-zero = active): ``binary[i-2][j, k]``
        is set when block ``j`` of module ``i`` reads block ``k`` of module ``i-1``. ``None``
        draws the full connectivity of ResNeXt (every block reads every block of the
        previous module; all blocks live).
      live: ``L`` bool vectors ``[C_i]``, whether each block survives pruning. ``None``
        computes it from ``binary`` (a block is live when a live block reads it; every
        block of module ``L`` is live).
      path: where to write the PNG (parent folders are created).
      title: figure title (default: "Learned connectivity" / "ResNeXt: full connectivity").
      fan_in: the fan-in ``K``, shown in the title.

    Raises:
      ValueError: when ``binary`` and ``live`` disagree on the number of modules or of
        blocks, or when neither is given.
    """
    full = binary is None
    if full:
        if live is None:
            raise ValueError("plot_connectivity needs binary or live")
        live = _as_live(live)
        binary = [np.ones((live[i].size, live[i - 1].size), bool) for i in range(1, len(live))]
    else:
        binary = [np.asarray(m) for m in binary]
        for i, m in enumerate(binary):
            if m.ndim != 2:
                raise ValueError(f"binary[{i}] (module {i + 2}) must be 2-D, got shape {m.shape}")
        binary = [m != 0 for m in binary]
        for i in range(1, len(binary)):
            if binary[i].shape[1] != binary[i - 1].shape[0]:
                raise ValueError(
                    f"binary[{i}] has {binary[i].shape[1]} columns but module {i + 1} has "
                    f"{binary[i - 1].shape[0]} blocks (rows of binary[{i - 1}])"
                )
        if live is None:
            if not binary:
                raise ValueError("a one-module network needs live")
            live = _live_from_binary(binary)
        else:
            live = _as_live(live)
        if len(binary) != len(live) - 1:
            raise ValueError(
                f"binary has {len(binary)} masks but live has {len(live)} modules "
                f"(expected {len(live) - 1} masks)"
            )
        for i, m in enumerate(binary):
            want = (live[i + 1].size, live[i].size)
            if m.shape != want:
                raise ValueError(
                    f"binary[{i}] (module {i + 2}) has shape {m.shape} but live gives "
                    f"{want[0]} blocks in module {i + 2} and {want[1]} in module {i + 1}"
                )

    n_mod = len(live)
    sizes = [v.size for v in live]
    c_max = max(sizes)

    # Geometry: data x = block index (centred per row), data y = -row (row 0 = stem,
    # rows 1..L = modules, row L+1 = head). ux, uy = inches per data unit.
    ux = min(0.7, 13.0 / c_max)
    uy = min(0.8, 17.0 / (n_mod + 2))
    side = min(0.62 * ux, 0.45 * uy)  # square side (inches)
    w, h = side / ux, side / uy  # square size in data units
    circ = min(0.32, 0.6 * uy)  # circle diameter (inches)
    ax_w, ax_h = ux * (c_max + 0.4), uy * (n_mod + 2)
    # Fonts grow with the figure, so that big ones stay readable once scaled down.
    fs = float(np.clip((ax_w + 1.3) / 7.5, 1.0, 1.7))
    left, right, top, bottom = 0.6 + 0.4 * fs, 0.3, 0.4 + 0.45 * fs, 0.5 + 0.65 * fs
    fig_w = max(ax_w + left + right, 6.4)
    fig_h = ax_h + top + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    x0 = left + (fig_w - left - right - ax_w) / 2
    ax = fig.add_axes((x0 / fig_w, bottom / fig_h, ax_w / fig_w, ax_h / fig_h))
    ax.set_xlim(-(c_max + 0.4) / 2, (c_max + 0.4) / 2)
    ax.set_ylim(-(n_mod + 1.5), 0.5)

    xs = [np.arange(c) - (c - 1) / 2 for c in sizes]

    def y_of(row: int) -> float:
        return -float(row)

    # Edges, from the bottom of the source to the top of the target, in two groups
    # (stem/head fan-out, connections between modules) of their own density.
    outer_live, outer_dead, inner_live, inner_dead = [], [], [], []
    stem_bottom = y_of(0) - circ / uy / 2
    for j in range(sizes[0]):
        seg = ((0.0, stem_bottom), (xs[0][j], y_of(1) + h / 2))
        (outer_live if live[0][j] else outer_dead).append(seg)
    for i, mat in enumerate(binary):  # module i+2 reads module i+1
        tgt, src = np.nonzero(mat)
        for j, k in zip(tgt, src, strict=True):
            seg = ((xs[i][k], y_of(i + 1) - h / 2), (xs[i + 1][j], y_of(i + 2) + h / 2))
            (inner_live if live[i + 1][j] else inner_dead).append(seg)
    head_top = y_of(n_mod + 1) + circ / uy / 2
    for k in range(sizes[-1]):
        seg = ((xs[-1][k], y_of(n_mod) - h / 2), (0.0, head_top))
        (outer_live if live[-1][k] else outer_dead).append(seg)

    arrows = c_max <= 16  # arrowheads only while they stay legible
    head = max(4.0, min(9.0, 14 * side))
    scale_lw = min(1.0, ux / 0.4 + 0.25)
    for live_seg, dead_seg, per_gap in (
        (outer_live, outer_dead, max(sizes[0], sizes[-1])),
        (inner_live, inner_dead, (len(inner_live) + len(inner_dead)) / max(1, n_mod - 1)),
    ):
        density = math.sqrt(max(per_gap, 1.0))
        alpha = float(np.clip(5.0 / density, 0.06, 0.9))
        lw = float(np.clip(6.0 / density, 0.3, 1.3)) * scale_lw
        if arrows:
            for segs, color, a, style, z in (
                (dead_seg, _DEAD_LINE, 0.9, (0, (3, 2)), 1),
                (live_seg, _EDGE, max(alpha, 0.45), "-", 2),
            ):
                for p, q in segs:
                    ax.add_patch(
                        FancyArrowPatch(
                            p,
                            q,
                            arrowstyle="-|>",
                            mutation_scale=head,
                            shrinkA=0,
                            shrinkB=0.5,
                            color=color,
                            alpha=a,
                            linewidth=lw,
                            linestyle=style,
                            zorder=z,
                        )
                    )
            continue
        if dead_seg:
            ax.add_collection(
                LineCollection(
                    dead_seg,
                    colors=_DEAD_LINE,
                    linewidths=lw * 0.8,
                    alpha=min(0.8, alpha * 1.5),
                    linestyles=(0, (3, 2)),
                    zorder=1,
                )
            )
        if live_seg:
            ax.add_collection(
                LineCollection(live_seg, colors=_EDGE, linewidths=lw, alpha=alpha, zorder=2)
            )

    # Blocks.
    show_x = side * 72 >= 9  # an X inside pruned squares when they are >= 9 pt wide
    for i, v in enumerate(live):
        for k, alive in enumerate(v):
            cx, cy = xs[i][k], y_of(i + 1)
            ax.add_patch(
                Rectangle(
                    (cx - w / 2, cy - h / 2),
                    w,
                    h,
                    facecolor=_LIVE_FACE if alive else _DEAD_FACE,
                    edgecolor=_LIVE_EDGE if alive else _DEAD_EDGE,
                    linewidth=0.9 if side * 72 >= 6 else 0.4,
                    linestyle="-" if alive else (0, (2, 1)),
                    zorder=3,
                )
            )
            if not alive and show_x:
                dx, dy = 0.3 * w, 0.3 * h
                ax.plot(
                    [cx - dx, cx + dx, np.nan, cx - dx, cx + dx],
                    [cy - dy, cy + dy, np.nan, cy + dy, cy - dy],
                    color=_DEAD_EDGE,
                    linewidth=1.0,
                    zorder=4,
                )
    for row, color in ((0, _STEM), (n_mod + 1, _HEAD)):
        ax.add_patch(
            Ellipse(
                (0.0, y_of(row)),
                circ / ux,
                circ / uy,
                facecolor=color,
                edgecolor="black",
                linewidth=0.8,
                zorder=3,
            )
        )

    # Row labels.
    rows = list(range(n_mod + 2))
    labels = ["conv"] + [str(i) for i in range(1, n_mod + 1)] + ["fc"]
    ax.set_yticks([y_of(r) for r in rows])
    ax.set_yticklabels(labels, fontsize=(8 if n_mod <= 20 else 7) * fs)
    ax.set_ylabel("module", fontsize=10 * fs)
    ax.tick_params(axis="y", length=0)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)

    # Title and legend.
    n_live = int(sum(v.sum() for v in live))
    n_all = int(sum(sizes))
    n_conn = int(sum(int(m.sum()) for m in binary))
    n_conn_live = int(sum(int(m[live[i + 1]].sum()) for i, m in enumerate(binary)))
    if title is None:
        title = "ResNeXt: full connectivity" if full else "Learned connectivity"
    if fan_in is not None:
        title = f"{title} (K = {fan_in})"
    cards = sorted(set(sizes))
    card = f"C = {cards[0]}" if len(cards) == 1 else f"C = {cards[0]}..{cards[-1]}"
    if full:
        sub = f"L = {n_mod} modules, {card}; every block reads every block of the module above"
    else:
        sub = (
            f"L = {n_mod} modules, {card}; live blocks {n_live}/{n_all}; "
            f"connections between modules: {n_conn_live} live / {n_conn}"
        )
    fig.text(0.5, 1 - 0.25 * fs / fig_h, title, ha="center", va="center", fontsize=12 * fs)
    fig.text(
        0.5, 1 - 0.52 * fs / fig_h, sub, ha="center", va="center", fontsize=8.5 * fs, color="0.3"
    )

    handles = [
        Patch(facecolor=_LIVE_FACE, edgecolor=_LIVE_EDGE, label=f"live block ({n_live})"),
        Line2D([], [], color=_EDGE, linewidth=1.2, label="connection"),
    ]
    if n_live < n_all:
        handles += [
            Patch(
                facecolor=_DEAD_FACE,
                edgecolor=_DEAD_EDGE,
                linestyle=(0, (2, 1)),
                label=f"pruned block ({n_all - n_live})",
            ),
            Line2D(
                [],
                [],
                color=_DEAD_LINE,
                linewidth=1.2,
                linestyle=(0, (3, 2)),
                label="connection into a pruned block",
            ),
        ]
    handles += [
        Line2D(
            [], [], marker="o", color="none", markerfacecolor=_STEM, markeredgecolor="black",
            markersize=8, label="conv stem",
        ),
        Line2D(
            [], [], marker="o", color="none", markerfacecolor=_HEAD, markeredgecolor="black",
            markersize=8, label="fc head",
        ),
    ]  # fmt: skip
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, 0.5 * (bottom - 0.1) / fig_h),
        ncol=len(handles) // 2,
        fontsize=8 * fs,
        frameon=False,
        handlelength=2.2,
        columnspacing=1.5,
    )
    # Cap the longer side near 1900 pixels: drawing thousands of lines costs per pixel.
    _save(fig, path, dpi=float(np.clip(1900 / max(fig_w, fig_h), 90, _DPI)))


# --------------------------------------------------------------------------- active branches


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


# --------------------------------------------------------------------------- learning curves


def _x_of(records: list[dict]) -> tuple[list[float | None], str]:
    """Per record, the x coordinate (epoch, or estimated from the step; or the step)."""
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


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _series(records, xs, key) -> tuple[np.ndarray, np.ndarray]:
    pts = [(x, _num(r.get(key))) for r, x in zip(records, xs, strict=True)]
    pts = sorted((x, y) for x, y in pts if x is not None and y is not None)
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.array(pts, float)
    return a[:, 0], a[:, 1]


def _phase_boundaries(records, xs) -> list[tuple[float, object]]:
    """``(x, new_phase)`` where the phase changes: midway between the last record of a phase
    and the first of the next one (phases ordered by their first record)."""
    spans: dict = {}
    for r, x in zip(records, xs, strict=True):
        phase = r.get("phase")
        if x is None or phase is None:
            continue
        key = repr(phase)
        lo, hi, _ = spans.get(key, (x, x, phase))
        spans[key] = (min(lo, x), max(hi, x), phase)
    ordered = sorted(spans.values(), key=lambda t: t[0])
    out = []
    for (_, hi, _), (lo, _, phase) in itertools.pairwise(ordered):
        out.append(((hi + lo) / 2 if hi <= lo else lo, phase))
    return out


def _first_phase(records, xs):
    pts = [(x, r.get("phase")) for r, x in zip(records, xs, strict=True) if x is not None]
    pts = [p for p in pts if p[1] is not None]
    return min(pts, key=lambda p: p[0])[1] if pts else None


def plot_learning_curves(records: Sequence[Mapping], path, *, title: str | None = None) -> None:
    """Plots the metrics of a run (records of ``metrics.jsonl``) against the epoch.

    Panels (each only when some record has its keys): loss (``train/loss``,
    ``test/loss``), accuracy (``train/accuracy``, ``test/accuracy``), learning rates
    (every ``lr/*`` key) and masks (``masks/entropy``; ``masks/changed`` on a right axis).
    Records without ``epoch`` get one from their ``step`` (scaled by the latest record
    having both); without any ``epoch``, the x axis is the step. Dashed vertical lines mark
    where ``phase`` changes. With no plottable data the PNG says so.

    Args:
      records: dicts with ``step``, ``epoch``, ``phase`` and metric keys; any may be missing.
      path: where to write the PNG.
      title: figure title.
    """
    records = [dict(r) for r in records]
    xs, xlabel = _x_of(records)
    keys = {k for r in records for k in r}

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
    series = {k: _series(records, xs, k) for k in keys}
    panels = [
        p for p in panels if any(series[k][0].size for k in p[1]) or (p[2] and series[p[2]][0].size)
    ]

    if not panels:
        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics to plot", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        if title:
            fig.suptitle(title)
        _save(fig, path)
        return

    n = len(panels)
    ncols = 2 if n == 4 else n
    nrows = 2 if n == 4 else 1
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    bounds = _phase_boundaries(records, xs)
    styles = {"train": dict(linewidth=1.2, alpha=0.85), "test": dict(marker="o", markersize=3.5)}
    colors = {"train": "tab:blue", "test": "tab:orange"}

    twins = {}
    for ax, (name, left_keys, right_key) in zip(axes, panels, strict=True):
        for k in left_keys:
            x, y = series[k]
            if not x.size:
                continue
            split = k.split("/", 1)
            kw = dict(styles.get(split[0], {"linewidth": 1.4}))
            if split[0] in colors:
                kw["color"] = colors[split[0]]
            if x.size == 1:
                kw.setdefault("marker", "o")
            label = {"lr": f"lr ({split[-1]})"}.get(split[0], split[0])
            ax.plot(x, y, label=label if split[0] != "masks" else split[1], **kw)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if name == "accuracy":
            ax.set_ylabel("accuracy" + (" (%)" if _max_of(series, left_keys) > 1.0 else ""))
        elif name == "masks" and left_keys:
            ax.set_ylabel("mean mask entropy")
        else:
            ax.set_ylabel(name)
        handles, labs = ax.get_legend_handles_labels()
        if right_key and series[right_key][0].size:
            x, y = series[right_key]
            twin = ax.twinx()
            twins[ax] = twin
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
            h2, l2 = twin.get_legend_handles_labels()
            handles, labs = handles + h2, labs + l2
        if handles:
            ax.legend(handles, labs, fontsize=8, loc="best")

    # One x range for all panels (some metrics exist only in some phases).
    plotted = [k for _, left_keys, right_key in panels for k in [*left_keys, right_key] if k]
    all_x = np.concatenate([series[k][0] for k in plotted])
    lo, hi = float(all_x.min()), float(all_x.max())
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    first = _first_phase(records, xs)
    for ax in axes:
        ax.set_xlim(lo - pad, hi + pad)
        if bounds:  # headroom for the phase labels
            for a in (ax, twins.get(ax)):
                if a is not None:
                    y0, y1 = a.get_ylim()
                    a.set_ylim(y0, y1 + 0.07 * (y1 - y0))
        # A dashed line at each change of phase; the first phase is named at the left edge.
        marks = [(xb, phase, True) for xb, phase in bounds]
        if bounds and first is not None:
            marks.insert(0, (lo, first, False))
        for xb, phase, line in marks:
            if line:
                ax.axvline(xb, color="0.35", linestyle="--", linewidth=1.0, zorder=0)
            ax.annotate(
                f"phase {phase}",
                xy=(xb, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=7.5,
                color="0.25",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
            )
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _max_of(series, keys) -> float:
    vals = [series[k][1].max() for k in keys if series[k][1].size]
    return max(vals) if vals else 0.0
