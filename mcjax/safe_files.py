"""Writing files so that a planted link or a crash cannot damage anything.

Every file mcjax writes goes through here. On a shared runs directory another user
may plant a symbolic link where a run is about to write (``config.json.tmp`` pointing
at someone's data, a ``.lock`` pointing at a file to empty); a crash or a full disk
may stop a write halfway. The two rules that hold against both:

* **Whole files are replaced, never rewritten in place.** :func:`write_bytes` (and
  :func:`write_text`, :func:`write_json`) write a temporary file that is created
  exclusively (``tempfile.mkstemp``: ``O_CREAT | O_EXCL`` under a random name, so
  no existing path, link or not, is ever opened), flush and ``fsync`` it, and
  ``os.replace`` it onto the destination. ``rename`` replaces the directory entry,
  so a destination that is a link is replaced by the file, and its target is left
  alone. A reader sees the old file or the new one, never a part.
* **Files that are opened in place are opened without following a link**
  (:func:`open_no_follow`: ``O_NOFOLLOW``, and for appends ``O_APPEND``; or
  :func:`append_bytes`): a planted link is an ``OSError`` (``ELOOP``), not a write
  somewhere else, and anything but a regular file (a FIFO that would block, a
  device, a directory) is refused before a byte is written.

Errors are the operating system's (``OSError`` with its ``errno``, and the
destination as its ``filename``); the temporary file is removed when a write fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from typing import Any

__all__ = ["append_bytes", "open_no_follow", "write_bytes", "write_json", "write_text"]


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically replaces ``path`` with a file holding ``data`` (see the module docstring).

    Args:
      path: the destination. Its directory must exist. If it is a symbolic link,
        the link is replaced and its target is not touched.
      data: the whole content.
      mode: permission bits of the new file (before the umask).

    Raises:
      OSError: from the file system (no space, read-only, a missing directory...);
        the destination is then unchanged and no temporary file is left.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    with _naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with _naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_UMASK)  # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> None:
    """:func:`write_bytes` of ``text`` encoded as UTF-8."""
    write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kwargs) -> None:
    """:func:`write_text` of ``json.dumps(obj, indent=indent, **kwargs)`` and a newline.

    The object is serialised before anything is written, so an object that JSON
    cannot hold leaves the destination unchanged.
    """
    write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def open_no_follow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode)`` of a regular file: a descriptor.

    For files used in place (a lock, an appended log). A symbolic link at ``path``
    raises ``OSError`` (``errno.ELOOP``) instead of opening its target; a directory
    raises ``EISDIR``, and any other file that is not a regular file (a FIFO, a
    socket, a device) raises ``EINVAL``. The open itself never blocks (``O_NONBLOCK``,
    which a regular file ignores), so a planted FIFO cannot hang the caller.
    """
    path = os.fspath(path)
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(kind):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Appends ``data`` to the regular file ``path`` (created if absent), never through a link.

    One ``O_APPEND`` descriptor per call (:func:`open_no_follow`), so the file is
    opened by its name each time: a file replaced meanwhile is written where the
    name now points only if that is a regular file, and a removed directory is an
    ``OSError`` rather than writes into a deleted file.

    Raises:
      OSError: from the file system, or ``ELOOP``/``EISDIR``/``EINVAL`` for a link,
        a directory or a special file at ``path``.
    """
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        with _naming(path):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@contextlib.contextmanager
def _naming(path: str | os.PathLike):
    """Adds ``path`` to an ``OSError`` that names no file (``write``'s do not)."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, os.fspath(path)) from error


def _read_umask() -> int:
    # The only portable way to read the umask is to set it and put it back: done once,
    # at import, because another thread creating a file in between would get umask 0.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; some file systems refuse fsync on a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
