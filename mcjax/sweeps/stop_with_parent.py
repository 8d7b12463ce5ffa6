"""Runs a command that gets SIGTERM when the process that started it dies (Linux).

    python -I stop_with_parent.py PARENT_PID COMMAND [ARG...]

asks the kernel for the parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) and
then becomes ``COMMAND`` (``execvp``), which keeps the request: when ``PARENT_PID``, the
sweep, dies in any way (SIGKILL included), its run gets SIGTERM, saves a checkpoint and
exits 75. If the sweep is already gone when the request is made, the command is not
started (this process ends by SIGTERM).

The sweep starts each run through this file instead of a ``preexec_fn``: Python code
run between ``fork`` and ``exec`` in a process that has imported JAX is what makes
JAX's (and Python's) fork warnings, and may deadlock. This file is run by path (not
``-m``), so that it imports nothing but the standard library before the ``exec``.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        print(f"warning: prctl(PR_SET_PDEATHSIG): {os.strerror(error)}", file=sys.stderr)
    if os.getppid() != parent:  # the sweep died before the request
        os.kill(os.getpid(), signal.SIGTERM)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
