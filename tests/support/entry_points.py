"""``python -m mcjax.main ARGS`` (or another entry point) in the test process.

:func:`run_module` executes the module as ``python -m`` does (``runpy``, as ``__main__``,
``sys.argv`` set), so its flag definitions, its flag parsing, its ``main`` and the way
an error becomes an exit status and a sentence are all the command's own. Two things
differ from a process, and only in absl's plumbing: ``absl.app.run`` is replaced by a
plain "parse the flags, call main" (absl allows its flag registration once per
process), and the flags a run defines are removed again afterwards (absl's flags are
global, and the next run defines them anew). And the program's allocator setting
(``--host_malloc``) is recorded in :data:`HOST_MALLOC_CALLS`, not applied: the test
process's allocator is not the command's to change (tests/training/test_host_memory.py
applies it in processes of their own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import runpy
import sys
import warnings
from collections.abc import Sequence
from unittest import mock

from absl import app, flags
from absl import logging as absl_logging

from mcjax.training import host_memory
from support import REPO_ROOT
from support.processes import message_lines

_ENTRY_MODULES = ("__main__", "mcjax.main", "mcjax.cost_table", "mcjax.sweep")


@dataclasses.dataclass
class Outcome:
    """How a run ended: its exit status, and what it printed."""

    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """stderr without log and progress lines (what the user reads)."""
        return message_lines(self.err)

    def error_line(self) -> str:
        """The one ``error:`` line of a run that exited 2 (``EXIT_BAD_INPUT``)."""
        assert self.status == 2, (self.status, self.err)
        assert len(self.lines) == 1 and self.lines[0].startswith("error: "), self.err
        return self.lines[0]


def _app_run(main, argv=None, flags_parser=app.parse_flags_with_usage):
    """``absl.app.run`` without its once-per-process setup: parse, then ``main``."""
    args = flags_parser(sys.argv if argv is None else argv)
    try:
        sys.exit(main(args))
    except app.UsageError as error:
        app.usage(shorthelp=True, detailed_error=error, exitcode=error.exitcode)


# One entry per run that asked for freed memory to be kept mapped (--host_malloc).
HOST_MALLOC_CALLS: list[str] = []


def _record_host_malloc() -> bool:
    HOST_MALLOC_CALLS.append("keep_freed_memory_mapped")
    return False


def _is_entry_flag(name: str) -> bool:
    module = flags.FLAGS.find_module_defining_flag(name)
    return module in _ENTRY_MODULES or name == "config" or name.startswith("config.")


@contextlib.contextmanager
def _own_flags():
    """Takes the entry points' flags out of absl's global FLAGS, and puts them back after."""
    taken = {}
    for name in [n for n in flags.FLAGS if _is_entry_flag(n)]:
        taken[name] = (flags.FLAGS.find_module_defining_flag(name), flags.FLAGS[name])
        delattr(flags.FLAGS, name)
    before = set(flags.FLAGS)
    try:
        yield
    finally:
        for name in [n for n in flags.FLAGS if n not in before]:
            delattr(flags.FLAGS, name)
        for name, (module, flag) in taken.items():
            flags.FLAGS[name] = flag
            flags.FLAGS.register_flag_by_module(module, flag)


def _status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter does with a message
    return 1


def _exit_as_system_exit(status: int) -> None:
    raise SystemExit(status)


def run_module(module: str, args: Sequence[str] = (), *, cwd=REPO_ROOT) -> Outcome:
    """``python -m MODULE ARGS`` run in this process from ``cwd``; never raises SystemExit.

    An exception other than SystemExit (the command's traceback, exit status 1)
    propagates, so a test fails on it with the traceback.
    """
    out, err = io.StringIO(), io.StringIO()
    argv, directory, verbosity = sys.argv, os.getcwd(), absl_logging.get_verbosity()
    sys.argv = [module, *args]
    # ml_collections executes every config file into one module, "config_config", and
    # reuses it when it is loaded: a fresh process has none.
    sys.modules.pop("config_config", None)
    try:
        os.chdir(cwd)
        with (
            _own_flags(),
            mock.patch.object(app, "run", _app_run),
            # A program that ends itself at once (mcjax.main does, when a library thread
            # would keep a failed run alive) must not end the test process with it.
            mock.patch.object(os, "_exit", _exit_as_system_exit),
            mock.patch.object(host_memory, "keep_freed_memory_mapped", _record_host_malloc),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            # A test file that imported the module (for its functions) is not a problem.
            warnings.filterwarnings("ignore", "'mcjax.* found in sys.modules", RuntimeWarning)
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
                status = 0
            except SystemExit as stop:
                status = _status(stop.code)
    finally:
        sys.argv = argv
        os.chdir(directory)
        absl_logging.set_verbosity(verbosity)
    return Outcome(status, out.getvalue(), err.getvalue())


def run_main(*args: str, **kwargs) -> Outcome:
    """``python -m mcjax.main ARGS`` in this process."""
    return run_module("mcjax.main", args, **kwargs)
