"""The learned connectivity of a multi-branch network, drawn like the paper's Figure 3.

Example::

    binary = [np.asarray(m) for m in mcjax.masks.top_k(params["masks"], net.fan_in)]
    plot_connectivity(binary, mcjax.prune.live_blocks(binary), "connectivity.png", fan_in=4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, FancyArrowPatch, Patch, Rectangle

from mcjax import prune
from mcjax.figures._common import DEAD_EDGE as _DEAD_EDGE
from mcjax.figures._common import DEAD_FACE as _DEAD_FACE
from mcjax.figures._common import DPI as _DPI
from mcjax.figures._common import LIVE_EDGE as _LIVE_EDGE
from mcjax.figures._common import LIVE_FACE as _LIVE_FACE
from mcjax.figures._common import as_live as _as_live
from mcjax.figures._common import save as _save

__all__ = ["plot_connectivity"]

_EDGE = "#263238"
_DEAD_LINE = "#c8c8c8"
_STEM = "#e53935"
_HEAD = "#1e88e5"


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
            live = prune.live_blocks(binary)
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
