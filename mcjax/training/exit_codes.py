"""Exit statuses of ``python -m mcjax.main`` and ``python -m mcjax.sweep``.

0 is success and 1 an unexpected error (a traceback); the others say what to do next.
"""

__all__ = ["EXIT_BAD_INPUT", "EXIT_NON_FINITE", "EXIT_PREEMPTED"]

EXIT_BAD_INPUT = 2  # a config or data problem, reported on one line
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; the last checkpoint is intact
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGINT after saving; run again to resume
