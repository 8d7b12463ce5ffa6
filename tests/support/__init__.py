"""Code the tests share (importable as ``support``: ``pythonpath`` in pyproject.toml).

A test file imports from here, never from another test file.

* :mod:`support.tiny`: the tiny digits run every training test uses (a config and its
  command-line twin).
* :mod:`support.entry_points`: ``python -m mcjax.main`` and the other entry points, run in
  the test process.
* :mod:`support.processes`: the environment and the few calls of the tests that need a
  process of their own (signals, SIGKILL, a lock held elsewhere, several processes).
* :mod:`support.workdirs`: reading and copying the workdir of a run.
* :mod:`support.fake_data`: small data sets the tests write themselves.
* ``fake_main.py``, ``parallel_check.py``: scripts the tests start as processes.
"""

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SUPPORT_DIR = pathlib.Path(__file__).resolve().parent

# float32 unit roundoff. A sum of n terms in another order differs by at most about
# n * u times the sum of their magnitudes (Higham's gamma_n); splitting a batch over
# devices reorders every batch reduction, of which the longest is a BN statistic over
# batch x height x width. One step moves the parameters by such sums, so after `steps`
# steps the state may differ by up to steps * n * u relative to the norm of the whole
# state (never relative to one near-zero element). A real error (a gradient N times
# too large, unsynchronised BN) is orders of magnitude above it.
UNIT_ROUNDOFF = 2.0**-24


def reordering_bound(steps: int, batch: int, height: int, width: int) -> float:
    """The largest relative change of a state that reordering float32 sums explains."""
    return steps * batch * height * width * UNIT_ROUNDOFF
