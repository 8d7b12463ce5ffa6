"""One run per workdir: an exclusive ``flock`` on ``workdir/.lock`` for the life of a run.

The lock belongs to the open file, so the kernel releases it when the process ends
in any way (SIGKILL included): there is never a stale lock to delete by hand. While
held, the file names its holder (``pid host``) so that a second run can say who it
is; the holder empties it when it lets go, so a finished run leaves the file as it
found it. In a multi-process job only process 0 takes the lock (the others write
nothing that another run could clobber) and every process learns whether it got it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

from mcjax.training import distributed

LOCK_NAME = ".lock"

__all__ = ["LOCK_NAME", "WorkdirBusy", "WorkdirLock"]


class WorkdirBusy(Exception):
    """Another live run holds the workdir (or it cannot be locked); one sentence."""


class WorkdirLock:
    """Context manager: holds the exclusive lock of ``workdir`` (process 0 of a job).

    Raises:
      WorkdirBusy: at ``__enter__``, on every process, naming the holder's pid and
        host, when another run holds it; also when the lock file cannot be created.
    """

    def __init__(self, workdir: str, *, is_primary: bool = True):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.is_primary = is_primary
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        problem = self._acquire() if self.is_primary else None
        if distributed.any_process(problem is not None):
            self.release()
            raise WorkdirBusy(problem or "process 0 could not lock the workdir")
        return self

    def _acquire(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            return f"cannot create the lock file {self.path} ({error.strerror})"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                return f"cannot lock {self.path} ({error.strerror})"
            who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "another run"
            return (
                f"the workdir {os.path.dirname(self.path)} is in use by a running run "
                f"({who}; lock {self.path}); wait for it to end, stop it, or use another "
                "--workdir"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        """Empties the file and lets go (the OS does the same if the process dies)."""
        if self._fd is None:
            return
        # A full or read-only disk: the lock still goes with the descriptor.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()
