r"""Trains MaskConnect with the paper's four-phase protocol.

    python -m mcjax.main                                   # digits quick start
    python -m mcjax.main --config configs/cifar100.py --workdir runs/c100 \
        --config.model.arch=29,8,8 --config.model.fan_in=4

Several processes (hosts, or one per GPU) run the same command; they join with
``jax.distributed`` (auto-detected on SLURM and Cloud TPU, or given by
``--coordinator_address/--num_processes/--process_id``); see ``launch/README.md``.

A workdir that holds a checkpoint is resumed from it (the newest one whose checksums
verify; a corrupt one is moved to ``workdir/corrupt_checkpoints`` with a warning).

Exit statuses (constants in :mod:`mcjax.training.workdir`):

* 0: finished.
* 2 (``EXIT_BAD_INPUT``): one ``error:`` line per problem, no traceback: a bad flag,
  config file or config field (also a misspelt field, a value of the wrong type, a flag
  given twice, more steps than int32 holds), bad data, batches larger than the data, a
  workdir that is a file, not writable, in use by another run, or holding the run of
  another config, network or data (see docs/reliability.md for
  what may change on resume), an error of the file system during the run (full, bytes
  or inodes; read-only; a path removed or replaced: the last finished checkpoint is
  intact), or a lost workdir lock that another run holds now.
* 3 (``EXIT_NON_FINITE``): the loss or a gradient became NaN/inf; one ``error:`` line
  naming the step and phase. The last checkpoint (of a finite state) is intact.
* 75 (``EXIT_PREEMPTED``, EX_TEMPFAIL): stopped by SIGTERM or SIGINT after finishing the
  step and saving a checkpoint at it, or after finding its ``.lock`` deleted or replaced
  (it took the lock again and saved a checkpoint; one ``error:`` line); run the same
  command again to resume.
* 1: anything unexpected (a traceback).
"""

import ast
import errno
import logging as std_logging
import os
import pathlib
import re
import sys
import threading
import traceback

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mcjax.data import sources
from mcjax.training import config as training_config
from mcjax.training import distributed, host_memory, loop, outputs
from mcjax.training import workdir as workdir_lib

# A value echoed in an error line is cut to this many characters (a 100,000-character
# override would otherwise be printed whole).
_LONGEST_ECHO = 200
_LONG_TOKEN = re.compile(rf"\S{{{_LONGEST_ECHO + 1},}}")


def _shorten(text: str) -> str:
    """``text`` with every run of more than ``_LONGEST_ECHO`` non-blank characters cut."""
    return _LONG_TOKEN.sub(
        lambda m: f"{m.group()[: _LONGEST_ECHO // 2]}... ({len(m.group())} characters)", text
    )


def _fail(message: str) -> None:
    print(f"error: {_shorten(message)}", file=sys.stderr)
    sys.exit(workdir_lib.EXIT_BAD_INPUT)


def _fail_all(problems) -> None:
    for problem in problems:
        print(f"error: {_shorten(problem)}", file=sys.stderr)
    sys.exit(workdir_lib.EXIT_BAD_INPUT)


def _unknown_field(error: Exception, argv: list[str]) -> str:
    """One line for ml_collections' error on a misspelt field (its suggestion included)."""
    text = str(error.args[0]) if error.args else str(error)
    # A KeyError's message arrives quoted, once per re-raise: unquote it.
    while text[:1] in ("'", '"'):
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            break
    lines = [line.strip(" '\"") for line in text.splitlines() if line.strip()]
    field = lines[0] if lines else "?"
    names = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
    flag = next((name for name in names if name.endswith("." + field)), "a --config flag")
    hint = f"; {lines[1][:1].lower()}{lines[1][1:]}" if len(lines) > 1 else ""
    return f"{flag}: the config has no field {field!r}{hint}"


# The quick start ships inside the package, so that the command runs from any directory.
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "digits.py"
try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", str(_DEFAULT_CONFIG), "Training config file.", lock_config=True
    )
except (KeyError, AttributeError) as _error:
    # ml_collections applies sys.argv's overrides to the default config right here.
    if __name__ != "__main__":
        raise
    _fail(_unknown_field(_error, sys.argv))
_FORCE_RESUME = flags.DEFINE_bool(
    "force_resume",
    False,
    "Resume the run in --workdir even if its config.json describes another network.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and figures (default: runs/<data set>)."
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    list(distributed.MODES),
    "Join a multi-process job with jax.distributed: auto (when the coordinator flags are "
    "given or SLURM/Cloud TPU shows several processes), on (always), off (never).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a job JAX cannot auto-detect."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_HOST_MALLOC = flags.DEFINE_enum(
    "host_malloc",
    "auto",
    list(host_memory.SETTINGS),
    "The host allocator: tuned keeps freed memory mapped for the next step (glibc; a CPU "
    "step ran 1.3x faster, the process keeps its high-water mark), default leaves glibc's "
    "defaults, auto is tuned on CPU (JAX_PLATFORMS=cpu or no accelerator plugin installed).",
)


class _QuietLibraries(std_logging.Filter):
    """Keeps libraries' INFO chatter (orbax's per-save lines, backend probing) out of the log."""

    def filter(self, record):
        noisy = any(name in record.pathname for name in ("orbax", "jax/_src", "absl/"))
        return record.levelno >= std_logging.WARNING or not noisy


def _repeated_flag(argv: list[str]) -> str | None:
    """The first ``--config...`` flag given twice (a repeated tuple flag would append)."""
    seen = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("--config"):
            name = arg.split("=", 1)[0]
            if name in seen:
                return name
            seen.add(name)
    return None


def _config_path(argv: list[str]) -> str:
    """The config file ``argv`` names (the last ``--config``), without its ``:args``."""
    path = str(_DEFAULT_CONFIG)
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and index + 1 < len(argv):
            path = argv[index + 1]
    return path.split(":", 1)[0]


def _exceptions(error: BaseException):
    """``error`` and those it was raised from or during."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _config_file_failure(error: BaseException, path: str) -> str | None:
    """One line if ``error`` (or one it came from) was raised by the config file's code."""
    target = os.path.realpath(path)
    for exc in _exceptions(error):
        lines = [
            line
            for frame, line in traceback.walk_tb(exc.__traceback__)
            if os.path.realpath(frame.f_code.co_filename) == target
        ]
        if lines:
            raised = _shorten(repr(exc))
            return (
                f"--config {path}: the config file raised {raised} at line {lines[-1]} while "
                "it was loaded; a config file defines get_config(), which returns an "
                "ml_collections.ConfigDict, and does nothing else"
            )
    return None


def _unloadable_config(path: str) -> None:
    """Fails for a config file ml_collections could not load (it defers the IOError)."""
    if not os.path.isfile(path):
        _fail(
            f"--config {path}: no such file; give the path of a config file, e.g. configs/digits.py"
        )
    _fail(f"--config {path}: the config file cannot be read")


def _check_loaded_config(path: str) -> None:
    """Refuses a config file that could not be read or whose get_config() is no ConfigDict."""
    value = _CONFIG.value
    if isinstance(value, ml_collections.ConfigDict):
        return
    if type(value).__name__ == "_ErrorConfig":  # ml_collections defers the load's IOError
        _unloadable_config(path)
    _fail(
        f"--config {path}: get_config() returned {_shorten(repr(type(value).__name__))}, not "
        "an ml_collections.ConfigDict"
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every error one ``error:`` line and exit status 2.

    absl would print a FATAL line and its usage (exit 1), and a misspelt config field
    escapes as a ``KeyError`` traceback with the suggestion buried in it. So do config
    files that are missing, raise (``SystemExit`` included, which would end the program
    with status 0 having done nothing) or return something else than a ``ConfigDict``.
    """
    repeated = _repeated_flag(argv)
    if repeated:
        _fail(f"{repeated} is given twice; give each flag once")
    path = _config_path(argv)
    try:
        remaining = flags.FLAGS(argv)
    except BaseException as error:  # the config file is Python: it can raise anything
        failure = _config_file_failure(error, path)
        if failure is not None:
            _fail(failure)
        if isinstance(error, flags.Error):
            if not os.path.isfile(path):  # so its fields are unknown flags
                _unloadable_config(path)
            _fail(str(error))
        if isinstance(error, AttributeError) and "'get_config'" in str(error):
            _fail(
                f"--config {path}: the config file defines no get_config(), which returns "
                "an ml_collections.ConfigDict"
            )
        if isinstance(error, (KeyError, AttributeError)):  # ml_collections: no such field
            _fail(_unknown_field(error, argv))
        if any("earlier failure to load" in str(e) for e in _exceptions(error)):
            _unloadable_config(path)  # overrides given to a config file that is missing
        raise
    _check_loaded_config(path)
    return remaining


def _workdir_problem(workdir: str) -> str | None:
    if not workdir.strip():
        return "--workdir is empty; it must name a directory (new, or of the run to resume)"
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        return f"--workdir {workdir} is a file; it must be a directory (new, or of a run)"
    return None


def _os_error_line(error: OSError, workdir: str) -> str:
    """One line for an error of the file system (full, read-only, a path removed or replaced)."""
    where = error.filename or workdir
    reason = error.strerror or str(error)
    checkpoints = os.path.join(workdir, "checkpoints")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device writing {where} ({reason}; bytes or inodes); the "
            f"last finished checkpoint in {checkpoints} is intact: free space and run the "
            "same command again"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where} ({reason}); --workdir must be a writable directory"
    if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EINVAL):
        return (
            f"cannot write {where} ({reason}): a path of the run was removed or replaced "
            f"while it ran (a directory, a file or a link where the run keeps its files); "
            f"the finished checkpoints in {checkpoints} are intact: restore the workdir, or "
            "use another --workdir"
        )
    return f"cannot write {where} ({reason})"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    # First of all: JAX's thread pools must find the allocator set (mcjax.training.host_memory).
    kept_mapped = host_memory.apply(_HOST_MALLOC.value)
    config_dict = _CONFIG.value
    workdir = (
        os.path.join("runs", str(config_dict.data.name))
        if _WORKDIR.value is None
        else _WORKDIR.value
    )
    problem = _workdir_problem(workdir)
    if problem:
        _fail(problem)
    try:  # before anything touches a device
        distributed.initialize(
            _DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as error:
        _fail(str(error))
    try:  # every field, before anything is loaded or compiled; the only reading of the dict
        config = training_config.from_config_dict(config_dict, num_devices=jax.device_count())
        training_config.check_workdir_matches(workdir, config, force=_FORCE_RESUME.value)
        mismatch = distributed.check_same_config(config.to_dict(), workdir)
        if mismatch:
            raise training_config.ConfigError(mismatch)
    except training_config.ConfigError as error:
        _fail_all(error.problems)
    logging.info("workdir %s", workdir)
    logging.info(
        "host allocator: %s (--host_malloc=%s)",
        "freed memory kept mapped" if kept_mapped else "glibc's defaults",
        _HOST_MALLOC.value,
    )
    workdir_lib.quiet_failed_saves(logging.get_absl_handler())
    try:
        summary = loop.train_and_evaluate(config, workdir, force_resume=_FORCE_RESUME.value)
    except training_config.ConfigError as error:
        _fail_all(error.problems)
    except (
        sources.DataError,
        workdir_lib.CheckpointMismatch,
        workdir_lib.WorkdirBusy,
        workdir_lib.BadWorkdir,
    ) as error:
        _fail(str(error))
    except workdir_lib.LockLost as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(workdir_lib.EXIT_PREEMPTED if error.resumable else workdir_lib.EXIT_BAD_INPUT)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(workdir_lib.EXIT_NON_FINITE)
    except workdir_lib.Preempted as stopped:
        print(f"preempted: {stopped}", file=sys.stderr)
        sys.exit(workdir_lib.EXIT_PREEMPTED)
    except Exception as error:  # the file system's, in whatever form it arrives
        found = workdir_lib.as_os_error(error)
        if found is None:
            raise
        _fail(_os_error_line(found, workdir))
    if jax.process_index() == 0:
        print(outputs.format_summary(summary))


def _exit_without_stranded_threads(status) -> None:
    """Ends a failed run now, even where a library thread still waits on the failure.

    After a save the file system refused, orbax can leave a thread waiting up to 300 s
    for a signal the failed save never sends; the interpreter would wait for it after
    the error line. With such threads alive, a failed run flushes its output and ends
    at once (the workdir lock goes with the process).
    """
    stranded = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if status and stranded:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status if isinstance(status, int) else 1)


if __name__ == "__main__":
    try:
        app.run(main, flags_parser=parse_flags)
    except SystemExit as exit_request:
        _exit_without_stranded_threads(exit_request.code)
        raise
