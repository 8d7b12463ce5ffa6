"""One sweep per sweep directory: an exclusive ``flock`` on ``DIR/.sweep.lock``.

The same kind of lock as a run's (:mod:`mcjax.training.workdir`): the lock belongs
to the open file, so the kernel releases it when the sweep ends in any way (SIGKILL
included) and there is never a stale lock to delete by hand. The file is opened with
``O_NOFOLLOW`` (:func:`mcjax.safe_files.open_no_follow`), so a link planted in its
place is refused instead of opening, and emptying, its target. While held, the file
names its holder (``pid host``) so that a second sweep can say who it is.

A second sweep on the same directory would rewrite ``sweep.json``, ``results.json`` and
the SLURM script under the first, and start the same runs; it stops before writing
anything. The runs themselves are each protected by their own lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

from mcjax import safe_files
from mcjax.sweeps.resolve import SweepError, shown

LOCK_NAME = ".sweep.lock"

__all__ = ["LOCK_NAME", "SweepLock"]


class SweepLock:
    """Context manager: holds the exclusive lock of the sweep directory ``workdir``
    (created if needed).

    Raises:
      SweepError: at ``__enter__``, one sentence: another live sweep holds it (naming
        its pid and host), or the lock file cannot be created or locked (a link or a
        directory in its place, a read-only file system).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> SweepLock:
        try:
            os.makedirs(self.workdir, exist_ok=True)
            fd = safe_files.open_no_follow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise SweepError(
                f"cannot create the sweep's lock file {shown(self.path)} ({error.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise SweepError(f"cannot lock {shown(self.path)} ({error.strerror})") from None
            who = (
                f"pid {shown(holder[0], 20)} on host {shown(holder[1], 80)}"
                if len(holder) >= 2
                else "another process"
            )
            raise SweepError(
                f"the sweep directory {shown(self.workdir)} is in use by another sweep "
                f"({who}; lock {shown(self.path)}); wait for it to end, stop it, or use "
                "another --workdir"
            ) from None
        # A full disk must not stop a sweep that holds its lock: the name is a courtesy.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empties the file and lets go (the OS does the same if the process dies)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()
