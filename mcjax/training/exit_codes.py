"""Exit statuses of ``python -m mcjax.main`` and ``python -m mcjax.sweep``.

0 is success and 1 an unexpected error (a traceback); the others say what to do next.
"""

__all__ = ["EXIT_BAD_INPUT", "EXIT_NON_FINITE", "EXIT_PREEMPTED"]

EXIT_BAD_INPUT = 2  # a config, data or file-system problem, reported on one line
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; the last checkpoint is intact
# EX_TEMPFAIL: stopped with a checkpoint (SIGTERM/SIGINT, or the workdir lock lost and
# taken again); run the same command again to resume.
EXIT_PREEMPTED = 75
