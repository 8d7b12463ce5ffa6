"""What every figure module shares: the colours of live and pruned blocks, saving a PNG
without ``pyplot`` state, and checking per-module live-block vectors."""

from __future__ import annotations

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mcjax import safe_files

LIVE_FACE = "#4caf50"
LIVE_EDGE = "#1b5e20"
DEAD_FACE = "#e6e6e6"
DEAD_EDGE = "#9e9e9e"
DPI = 150


def save(fig: Figure, path, dpi: float = DPI) -> None:
    """Writes ``fig`` as a PNG at ``path`` (parent folders are created).

    Rendered in memory, then written by :func:`mcjax.safe_files.write_bytes`: atomically,
    and a link planted at ``path`` is replaced, its target never written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    safe_files.write_bytes(path, png.getvalue())


def as_live(live, what: str = "live") -> list[np.ndarray]:
    """``live`` as a list of non-empty 1-D bool vectors, one per module.

    Raises:
      ValueError: naming the module whose vector is not 1-D, or when ``live`` is empty.
    """
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
