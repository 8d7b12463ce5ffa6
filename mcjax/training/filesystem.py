"""Errors of the file system, wherever they surface, as one ``OSError``.

A full disk (bytes or inodes), a read-only or vanished directory, or a path replaced
under a running program reaches mcjax in two forms: Python's ``OSError`` (with its
``errno``), and, from orbax's asynchronous saves, a ``ValueError`` of tensorstore whose
message carries the code (``... No space left on device [os_error_code='28']``),
raised in the main thread after orbax has logged it, with a traceback, from each of its
background threads. :func:`as_os_error` turns either into an ``OSError`` with the errno
and the path, so the program can say it in one line; :func:`quiet_failed_saves` drops
the tracebacks that would surround that line: those orbax logs from its background
threads, and those tensorstore prints when its remaining writes of the failed save
complete after orbax closed their event loop (``RuntimeError: Event loop is closed``,
17 of them for one full disk).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys

__all__ = [
    "FILESYSTEM_ERRNOS",
    "QuietFilesystemErrors",
    "as_os_error",
    "quiet_failed_saves",
]

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


class QuietFilesystemErrors(logging.Filter):
    """Drops orbax's logged tracebacks of a file-system error (the program says it once).

    Orbax logs an error with its traceback from each background thread a failed save
    runs in (a full disk gave 4 to 48 tracebacks), and asyncio one for each of its
    writes still running then (74 in one run), then orbax raises it in the main thread,
    where the program turns it into one line. Other records pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # asyncio: "Task exception was never retrieved", for each write of the failed
        # save that ended after the save was given up.
        from_saves = "orbax" in record.pathname or record.name == "asyncio"
        if record.levelno < logging.ERROR or not from_saves:
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


def quiet_failed_saves(handler: logging.Handler) -> None:
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
