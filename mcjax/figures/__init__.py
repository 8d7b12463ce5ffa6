"""Figures (matplotlib, Agg backend, no ``pyplot`` state); every function writes a PNG.

* :mod:`~mcjax.figures.connectivity`: ``plot_connectivity`` (the paper's Figure 3);
* :mod:`~mcjax.figures.branches`: ``plot_active_branches`` (Figures 4 and 5);
* :mod:`~mcjax.figures.curves`: ``plot_learning_curves`` of one run;
* :mod:`~mcjax.figures.sweep_figures`: a sweep's accuracy against K (Figure 2), mean
  active branches over seeds, and the learning curves of all its runs.
"""

from mcjax.figures.branches import plot_active_branches
from mcjax.figures.connectivity import plot_connectivity
from mcjax.figures.curves import plot_learning_curves
from mcjax.figures.sweep_figures import (
    plot_accuracy_vs_fan_in,
    plot_mean_active_branches,
    plot_sweep_learning_curves,
)

__all__ = [
    "plot_accuracy_vs_fan_in",
    "plot_active_branches",
    "plot_connectivity",
    "plot_learning_curves",
    "plot_mean_active_branches",
    "plot_sweep_learning_curves",
]
