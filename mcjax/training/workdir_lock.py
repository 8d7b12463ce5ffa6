"""One run per workdir: an exclusive ``flock`` on ``workdir/.lock`` for the life of a run.

The lock belongs to the open file, so the kernel releases it when the process ends
in any way (SIGKILL included): there is never a stale lock to delete by hand. While
held, the file names its holder (``pid host``) so that a second run can say who it
is; the holder empties it when it lets go, so a finished run leaves the file as it
found it. In a multi-process job only process 0 takes the lock (the others write
nothing that another run could clobber) and every process learns whether it got it.

The file is opened without following a link (:func:`mcjax.safe_files.open_no_follow`):
a ``.lock`` planted as a link to another file is refused, never truncated. A lock on a
file that someone deletes (or replaces) no longer excludes anyone: a second run would
create a new file and lock that. So the holder checks, after every step, that
``.lock`` is still the file it locked (:meth:`WorkdirLock.lost`), and a run that lost
it stops (:class:`LockLost`, see :mod:`mcjax.training.loop`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat

from mcjax import safe_files
from mcjax.training import distributed

LOCK_NAME = ".lock"

__all__ = [
    "LOCK_NAME",
    "RUN_DIRECTORIES",
    "BadWorkdir",
    "LockLost",
    "WorkdirBusy",
    "WorkdirLock",
    "check_layout",
]


class WorkdirBusy(Exception):
    """Another live run holds the workdir (or it cannot be locked); one sentence."""


class LockLost(Exception):
    """The run's lock file was deleted or replaced while it ran; one sentence.

    ``resumable``: True when this run took the lock again (no other run holds the
    workdir) and saved a checkpoint at the step it stopped at, so the same command
    resumes it; False when another run holds the workdir now (nothing was saved).
    """

    def __init__(self, message: str, *, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


class WorkdirLock:
    """Context manager: holds the exclusive lock of ``workdir`` (process 0 of a job).

    Raises:
      WorkdirBusy: at ``__enter__``, on every process, naming the holder's pid and
        host, when another run holds it; also when the lock file cannot be created
        or is not a regular file (a planted link, a directory).
    """

    def __init__(self, workdir: str, *, is_primary: bool = True):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.is_primary = is_primary
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the locked file

    def __enter__(self) -> WorkdirLock:
        problem = self._acquire() if self.is_primary else None
        if distributed.any_process(problem is not None):
            self.release()
            raise WorkdirBusy(problem or "process 0 could not lock the workdir")
        return self

    def _acquire(self) -> str | None:
        """Locks ``.lock`` (created if absent); None, or why it could not."""
        try:
            fd = safe_files.open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.EINVAL):
                return (
                    f"the lock file {self.path} is not a regular file (a symbolic link, a "
                    "directory or a special file); a run never writes through it: remove it, "
                    "or use another --workdir"
                )
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
        # Our own descriptor of a regular file: truncating it cannot reach another file.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        info = os.fstat(fd)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)
        return None

    def lost(self) -> str | None:
        """Why the lock no longer excludes other runs, or None while it does.

        A ``stat`` of the path (microseconds): the lock is lost when ``.lock`` was
        deleted, replaced by another file, or the workdir itself was removed or
        renamed. Always None on a process that holds no lock.
        """
        if self._fd is None:
            return None
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(self.path)):
                return f"the workdir {os.path.dirname(self.path)} was removed or renamed"
            return f"the lock file {self.path} was deleted"
        except OSError as error:
            return f"the lock file {self.path} cannot be checked ({error.strerror})"
        if (info.st_dev, info.st_ino) != self._identity:
            return f"the lock file {self.path} was replaced by another file"
        return None

    def retake(self) -> str | None:
        """After :meth:`lost`: locks the file now at the path; None, or why it could not.

        Success means no other run holds the workdir at this moment.
        """
        if self._fd is not None:
            os.close(self._fd)  # the old file is gone: its lock guards nothing
            self._fd = self._identity = None
        return self._acquire()

    def release(self) -> None:
        """Empties the file and lets go (the OS does the same if the process dies)."""
        if self._fd is None:
            return
        # A full or read-only disk: the lock still goes with the descriptor.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = self._identity = None

    def __exit__(self, *exc) -> None:
        self.release()


class BadWorkdir(Exception):
    """A path the run keeps its files under is not what it must be; one sentence."""


# The directories a run keeps under its workdir (orbax's steps, their checksums, corrupt
# steps moved aside, TensorBoard events, the pruned model).
RUN_DIRECTORIES = (
    "checkpoints",
    "checkpoint_sums",
    "corrupt_checkpoints",
    "tensorboard",
    "pruned_model",
)


def check_layout(workdir: str) -> None:
    """Refuses a workdir where one of :data:`RUN_DIRECTORIES` is a file or a link.

    A ``checkpoints`` that is a file would make the run start from step 0 as if it had
    none (and fail at its first save); one that is a link would put the run's files, and
    orbax's deletions of old steps, wherever the link points.

    Raises:
      BadWorkdir: naming the first such path and what to do.
    """
    for name in RUN_DIRECTORIES:
        path = os.path.join(workdir, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
            raise BadWorkdir(
                f"{path} is {kind}; a run keeps its {name.replace('_', ' ')} in a directory "
                "of that name: move it away (a run never writes through a link), or use "
                "another --workdir"
            )
