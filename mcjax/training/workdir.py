"""The run's workdir: its lock, its checkpoints, stop requests, and how a run ends.

Everything that keeps a workdir whole while a run writes into it, and what the program
says when it cannot (docs/design.md §10):

* **Exit statuses** of ``python -m mcjax.main`` and ``python -m mcjax.sweep``
  (:data:`EXIT_BAD_INPUT`, :data:`EXIT_NON_FINITE`, :data:`EXIT_PREEMPTED`).
* **Errors of the file system** (:func:`as_os_error`, :func:`quiet_failed_saves`).
* **Stop requests** on SIGTERM / SIGINT (:class:`StopRequests`, :class:`Preempted`).
* **The lock**: one run per workdir (:class:`WorkdirLock`, :func:`check_layout`).
* **Checkpoints** with orbax, verified by checksums (:class:`Checkpointer`).

Each part's own description follows at its section.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from mcjax import safe_files
from mcjax.training import distributed

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_NON_FINITE",
    "EXIT_PREEMPTED",
    "FILESYSTEM_ERRNOS",
    "LOCK_NAME",
    "MANIFEST_SUFFIX",
    "RUN_DIRECTORIES",
    "BadWorkdir",
    "CheckpointMismatch",
    "Checkpointer",
    "CorruptCheckpoint",
    "LockLost",
    "Preempted",
    "QuietFilesystemErrors",
    "StopRequests",
    "WorkdirBusy",
    "WorkdirLock",
    "as_os_error",
    "check_layout",
    "describe_mismatch",
    "directory_checksums",
    "quiet_failed_saves",
]


# --- Exit statuses --------------------------------------------------------------------------
# Exit statuses of ``python -m mcjax.main`` and ``python -m mcjax.sweep``.
#
# 0 is success and 1 an unexpected error (a traceback); the others say what to do next.


EXIT_BAD_INPUT = 2  # a config, data or file-system problem, reported on one line
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; the last checkpoint is intact
# EX_TEMPFAIL: stopped with a checkpoint (SIGTERM/SIGINT, or the workdir lock lost and
# taken again); run the same command again to resume.
EXIT_PREEMPTED = 75

# --- Errors of the file system --------------------------------------------------------------
# Errors of the file system, wherever they surface, as one ``OSError``.
#
# A full disk (bytes or inodes), a read-only or vanished directory, or a path replaced
# under a running program reaches mcjax in two forms: Python's ``OSError`` (with its
# ``errno``), and, from orbax's asynchronous saves, a ``ValueError`` of tensorstore whose
# message carries the code (``... No space left on device [os_error_code='28']``),
# raised in the main thread after orbax has logged it, with a traceback, from each of its
# background threads. :func:`as_os_error` turns either into an ``OSError`` with the errno
# and the path, so the program can say it in one line; :func:`quiet_failed_saves` drops
# the tracebacks that would surround that line: those orbax logs from its background
# threads, and those tensorstore prints when its remaining writes of the failed save
# complete after orbax closed their event loop (``RuntimeError: Event loop is closed``,
# 17 of them for one full disk).


# The errnos that mean "the file system refused" (not a bug of the program).
FILESYSTEM_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # no space (bytes or inodes)
        errno.EDQUOT,  # quota
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,  # a directory removed under the run
        errno.ENOTDIR,  # a directory replaced by a file
        errno.EISDIR,  # a file replaced by a directory
        errno.ELOOP,  # a link where a file is opened without following links
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ENAMETOOLONG,
        errno.EIO,
        errno.ESTALE,
        errno.EFBIG,
        errno.EMLINK,
        errno.EXDEV,
        errno.ENXIO,
    }
)

_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
# The path tensorstore names: the file it failed on, else its database's directory.
_PATHS = (
    re.compile(r'Failed (?:writing|to open|to create|reading|to rename|to delete)[^"]*"([^"]+)"'),
    re.compile(r'local file "([^"]+)"'),
    re.compile(r'"(/[^"]+)"'),
)


def _chain(error: BaseException):
    """``error`` and every exception it was raised from or during (cycles cut)."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]
        pending += list(getattr(current, "exceptions", ()))  # ExceptionGroup


def _from_message(text: str) -> OSError | None:
    match = _CODE.search(text)
    if match is None:
        return None
    code = int(match.group(1))
    if code not in FILESYSTEM_ERRNOS:
        return None
    path = None
    for pattern in _PATHS:
        found = pattern.search(text)
        if found:
            path = found.group(1)
            break
    return OSError(code, os.strerror(code), path)


def as_os_error(error: BaseException) -> OSError | None:
    """The file-system error behind ``error``, or None if there is none.

    Looks through ``error``'s chain (``__cause__``, ``__context__``, exception
    groups) for an ``OSError`` whose errno is in :data:`FILESYSTEM_ERRNOS` (or ``EINVAL``
    naming a file), or for a
    message carrying such an ``os_error_code`` (tensorstore's form). The result is an
    ``OSError`` with ``errno``, ``strerror`` and, where known, ``filename``.
    """
    for current in _chain(error):
        if isinstance(current, OSError) and (
            current.errno in FILESYSTEM_ERRNOS
            # EINVAL is a file system's only when it names a file (mcjax.safe_files: a
            # FIFO or device where a regular file is opened in place); else a bug.
            or (current.errno == errno.EINVAL and current.filename is not None)
        ):
            return current
        found = _from_message(str(current))
        if found is not None:
            return found
    return None


class QuietFilesystemErrors(std_logging.Filter):
    """Drops orbax's logged tracebacks of a file-system error (the program says it once).

    Orbax logs an error with its traceback from each background thread a failed save
    runs in (a full disk gave 4 to 48 tracebacks), and asyncio one for each of its
    writes still running then (74 in one run), then orbax raises it in the main thread,
    where the program turns it into one line. Other records pass unchanged.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        # asyncio: "Task exception was never retrieved", for each write of the failed
        # save that ended after the save was given up.
        from_saves = "orbax" in record.pathname or record.name == "asyncio"
        if record.levelno < std_logging.ERROR or not from_saves:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            return as_os_error(record.exc_info[1]) is None
        return _from_message(record.getMessage()) is None


def _is_late_callback(kind, value, tb) -> bool:
    """A tensorstore completion scheduled on an asyncio loop that orbax already closed."""
    if kind is not RuntimeError or str(value) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith("asyncio/base_events.py")


def quiet_failed_saves(handler: std_logging.Handler) -> None:
    """Drops the tracebacks of a failed save for the rest of the process (idempotent).

    :class:`QuietFilesystemErrors` goes on ``handler``, and ``sys.unraisablehook`` and
    ``sys.excepthook`` (through which tensorstore reports) skip the late-callback
    ``RuntimeError`` (module docstring). For the rest of the process: those callbacks
    arrive until the last write of the failed save ends, which may be after the
    program has reported it.
    """
    if not any(isinstance(f, QuietFilesystemErrors) for f in handler.filters):
        handler.addFilter(QuietFilesystemErrors())
    if getattr(sys.unraisablehook, "_mcjax_quiet", False):
        return
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisablehook(unraisable):
        late = _is_late_callback(
            unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
        )
        if not late:
            previous_unraisable(unraisable)

    def excepthook(kind, value, tb):
        if not _is_late_callback(kind, value, tb):
            previous_except(kind, value, tb)

    unraisablehook._mcjax_quiet = True
    sys.unraisablehook, sys.excepthook = unraisablehook, excepthook


# --- Stop requests --------------------------------------------------------------------------
# Stopping a run cleanly on SIGTERM / SIGINT.
#
# A scheduler that preempts a job sends SIGTERM (Ctrl-C sends SIGINT). While
# :class:`StopRequests` is active, the first such signal only sets a flag; the
# training loop checks it after each step, finishes the step, flushes the
# metrics, saves a checkpoint at that step, waits for the save, closes its
# writers and raises :class:`Preempted`; ``mcjax.main`` then exits with
# :data:`EXIT_PREEMPTED`. Running the same command again resumes. A second
# SIGINT raises ``KeyboardInterrupt`` at once (the last finished checkpoint
# stays restorable; orbax ignores an interrupted save).


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int, signal_name: str, directory: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint saved in {directory}; "
            "run the same command again to resume"
        )


class StopRequests:
    """Context manager: turns SIGTERM/SIGINT into a flag (``requested``, ``signal_name``).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# --- The lock -------------------------------------------------------------------------------
# One run per workdir: an exclusive ``flock`` on ``workdir/.lock`` for the life of a run.
#
# The lock belongs to the open file, so the kernel releases it when the process ends
# in any way (SIGKILL included): there is never a stale lock to delete by hand. While
# held, the file names its holder (``pid host``) so that a second run can say who it
# is; the holder empties it when it lets go, so a finished run leaves the file as it
# found it. In a multi-process job only process 0 takes the lock (the others write
# nothing that another run could clobber) and every process learns whether it got it.
#
# The file is opened without following a link (:func:`mcjax.safe_files.open_no_follow`):
# a ``.lock`` planted as a link to another file is refused, never truncated. A lock on a
# file that someone deletes (or replaces) no longer excludes anyone: a second run would
# create a new file and lock that. So the holder checks, after every step, that
# ``.lock`` is still the file it locked (:meth:`WorkdirLock.lost`), and a run that lost
# it stops (:class:`LockLost`, see :mod:`mcjax.training.loop`).


LOCK_NAME = ".lock"


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


# --- Checkpoints ----------------------------------------------------------------------------
# Checkpoints of the training state with orbax's ``CheckpointManager``.
#
# Each checkpoint holds the whole state (step, params, BN statistics, optimizer
# state, fixed connectivity) and a JSON ``meta`` item (phase, model config, PRNG
# settings). The PRNG keys are not stored: every draw is a pure function of
# ``config.seed`` and the step.
#
# Orbax makes a save atomic (a save killed half-way leaves a
# ``*.orbax-checkpoint-tmp`` directory that is never restored) but does not
# check integrity: flipped bytes in a finished checkpoint restore silently.
# So, once a save has finished, the sha256 of every file of its step directory
# goes into a manifest, ``workdir/checkpoint_sums/<step>.sha256.json`` (outside
# orbax's directory, which must hold nothing but orbax's own step directories).
# :meth:`Checkpointer.restore_latest` checks the newest step against its
# manifest and lets orbax restore it; a step that fails either is moved aside to
# ``workdir/corrupt_checkpoints/<step>-<time>`` with a warning, and the step
# before it is tried (then a fresh start). A step without a manifest (the process
# died after orbax finished the save but before the manifest was written) is
# restored *unverified* if orbax can read it, with a warning. A step that is intact
# but of another layout (another network: a shape, dtype or entry differs from the
# state the run builds) is never taken for damage: :class:`CheckpointMismatch` is
# raised and no file is touched.
#
# In a multi-process job every process takes part in each save and restore (orbax
# coordinates the writes); only the primary process (0) writes the manifests and
# moves corrupt steps aside, and the processes agree on the step they restore.
#
# A save that the file system refuses (a full disk, an unwritable or replaced
# directory) raises ``OSError`` naming the step's directory, from :meth:`Checkpointer.save`,
# :meth:`~Checkpointer.wait` or :meth:`~Checkpointer.close`, whichever first sees it
# (orbax saves in background threads and reports there as a ``ValueError``); the
# checkpoints finished before it are untouched (orbax never renames an unfinished step
# into place).


MANIFEST_SUFFIX = ".sha256.json"


def directory_checksums(directory: str) -> dict[str, str]:
    """sha256 of every file under ``directory``, keyed by its path relative to it."""
    sums = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            sums[os.path.relpath(path, directory)] = digest.hexdigest()
    return dict(sorted(sums.items()))


class CorruptCheckpoint(Exception):
    """A step directory does not match its checksum manifest."""


class CheckpointMismatch(Exception):
    """A readable checkpoint holds another structure, shape or dtype than this run's state.

    Not corruption: the checkpoint is of another network or state layout. Nothing is
    moved; the message names the first differing entry.
    """


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaves(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype)}`` of a state or of orbax's tree metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        _path_name(path): (tuple(leaf.shape), str(jax.numpy.dtype(leaf.dtype)))
        for path, leaf in leaves
    }


def describe_mismatch(saved_tree, abstract_state) -> str | None:
    """The first difference between a saved state's layout and ``abstract_state``'s, or None."""
    saved, wanted = _leaves(saved_tree), _leaves(abstract_state)
    for name in sorted(set(saved) | set(wanted)):
        if name not in wanted:
            return f"it holds {name}, which this run's state does not have"
        if name not in saved:
            return f"it lacks {name}, which this run's state has"
        if saved[name] != wanted[name]:
            (shape_s, dtype_s), (shape_w, dtype_w) = saved[name], wanted[name]
            return (
                f"{name} is {dtype_s}{list(shape_s)} in it and {dtype_w}{list(shape_w)} in this run"
            )
    return None


@contextlib.contextmanager
def _os_errors(path: str):
    """Re-raises orbax's report of a file-system error as ``OSError`` naming ``path``."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        found = as_os_error(error)
        if found is None:
            raise
        raise OSError(found.errno, found.strerror, path) from error


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, *, keep: int = 2, is_primary: bool = True):
        workdir = os.path.abspath(workdir)
        self.directory = os.path.join(workdir, "checkpoints")
        self.sums_directory = os.path.join(workdir, "checkpoint_sums")
        self.corrupt_directory = os.path.join(workdir, "corrupt_checkpoints")
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(max(1, keep)),
        )
        # The handlers named up front (not only through the save/restore args), so that a
        # fresh manager can read a step's metadata before restoring it.
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self.is_primary = is_primary  # writes manifests, moves corrupt steps aside
        self._unrecorded: list[int] = []  # saved steps whose manifest is not written yet
        self._saving = self.directory  # the step directory of the newest save (for errors)
        self._closed = False

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def manifest_path(self, step: int) -> str:
        return os.path.join(self.sums_directory, f"{step}{MANIFEST_SUFFIX}")

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; :meth:`wait` before relying on it.

        The previous save is finished (and its manifest written) first.
        """
        self.wait()
        # A stale manifest, e.g. from a copied workdir.
        if self.is_primary and os.path.exists(self.manifest_path(step)):
            os.remove(self.manifest_path(step))
        self._saving = self.step_directory(step)
        # A checkpoints directory removed or replaced under the run: said here, before
        # orbax starts threads that would wait 300 s for a step directory never made.
        if not stat.S_ISDIR(os.lstat(self.directory).st_mode):
            raise OSError(errno.ENOTDIR, "not a directory any more", self.directory)
        with _os_errors(self._saving):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        if self.is_primary:
            self._unrecorded.append(step)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the structure, shapes and shardings of ``abstract_state``.

        No checksum check; :meth:`restore_latest` does one.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def verify(self, step: int) -> bool:
        """True if ``step`` matches its manifest, False if it has none.

        Raises:
          CorruptCheckpoint: naming the first file that is missing, extra or differs.
        """
        path = self.manifest_path(step)
        try:
            with open(path) as f:
                expected = json.load(f)["files"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptCheckpoint(f"its manifest {path} cannot be read ({error})") from error
        actual = directory_checksums(self.step_directory(step))
        for name in sorted(set(expected) | set(actual)):
            if name not in actual:
                raise CorruptCheckpoint(f"file {name} is missing")
            if name not in expected:
                raise CorruptCheckpoint(f"file {name} is not in the manifest")
            if actual[name] != expected[name]:
                raise CorruptCheckpoint(f"file {name} does not match its sha256")
        return True

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """Restores the newest step that verifies and restores; ``None`` if there is none.

        Only damage moves a step aside (see the module docstring): a checksum mismatch,
        or files orbax cannot read. A step that reads fine but holds another layout
        than ``abstract_state`` (another network) is not damage: nothing is touched.
        With several processes, a step that fails on any process is given up by all.

        Raises:
          CheckpointMismatch: the newest readable step does not fit ``abstract_state``;
            the workdir is left exactly as it was.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            failure = None
            mismatch = None
            try:
                verified = self.verify(step)
                saved_tree = self._saved_tree(step)
                if saved_tree is not None:  # else let the restore itself decide
                    mismatch = describe_mismatch(saved_tree, abstract_state)
                if mismatch is None:
                    state, meta = self.restore(step, abstract_state)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # orbax raises many kinds on a damaged checkpoint
                first_line = str(error).splitlines()[0][:300] if str(error) else ""
                failure = f"{type(error).__name__}: {first_line}"
            if distributed.any_process(failure is not None):
                moved = self._move_aside(step) if self.is_primary else self.corrupt_directory
                distributed.barrier(f"mcjax_checkpoint_moved_{step}")
                self.manager.reload()
                logging.warning(
                    "checkpoint step %d in %s is corrupt (%s); moved it to %s and "
                    "falling back to the previous checkpoint",
                    step,
                    self.directory,
                    failure or "on another process",
                    moved,
                )
                continue
            if mismatch is not None:
                raise CheckpointMismatch(
                    f"the checkpoint of step {step} in {self.directory} does not fit this "
                    f"run's network: {mismatch}; resume it with the config it was made "
                    "with, or use another --workdir"
                )
            if not verified:
                logging.warning(
                    "checkpoint step %d has no checksum manifest (the run stopped right after "
                    "saving it); restored it unverified",
                    step,
                )
            return state, meta, step
        return None

    def _saved_tree(self, step: int):
        """The tree of shapes and dtypes saved at ``step`` (orbax's metadata)."""
        metadata = self.manager.item_metadata(step)["state"]
        return None if metadata is None else getattr(metadata, "tree", metadata)

    def _move_aside(self, step: int) -> str:
        os.makedirs(self.corrupt_directory, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = os.path.join(self.corrupt_directory, f"{step}-{stamp}")
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(self.corrupt_directory, f"{step}-{stamp}-{suffix}")
        shutil.move(self.step_directory(step), target)
        if os.path.exists(self.manifest_path(step)):
            shutil.move(self.manifest_path(step), os.path.join(target + MANIFEST_SUFFIX))
        return target

    def record_finished(self) -> None:
        """Writes the manifests of finished saves, without waiting; cheap, call it every step."""
        if self._unrecorded and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the running save, then writes the manifests of the finished ones.

        Raises:
          OSError: the file system refused the save (its step directory named).
        """
        with _os_errors(self._saving):
            self.manager.wait_until_finished()
        if not self._unrecorded:
            return
        existing = set(self.manager.all_steps())
        os.makedirs(self.sums_directory, exist_ok=True)
        for step in self._unrecorded:
            if step in existing:
                self._write_manifest(step)
        self._unrecorded.clear()
        # Manifests of steps the preservation policy deleted.
        for name in os.listdir(self.sums_directory):
            stem = name[: -len(MANIFEST_SUFFIX)]
            if name.endswith(MANIFEST_SUFFIX) and stem.isdigit() and int(stem) not in existing:
                os.remove(os.path.join(self.sums_directory, name))

    def _write_manifest(self, step: int) -> None:
        manifest = {"step": step, "files": directory_checksums(self.step_directory(step))}
        safe_files.write_json(self.manifest_path(step), manifest, indent=1)

    def close(self) -> None:
        """Waits for the last save, writes its manifest and closes (once; then a no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            with _os_errors(self._saving):
                self.manager.close()
