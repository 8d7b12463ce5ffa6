r"""Trains MaskConnect with the paper's four-phase protocol.

    python -m mcjax.main                                   # digits quick start
    python -m mcjax.main --config configs/cifar100.py --workdir runs/c100 \
        --config.model.arch=29,8,8 --config.model.fan_in=4

Several processes (hosts, or one per GPU) run the same command; they join with
``jax.distributed`` (auto-detected on SLURM and Cloud TPU, or given by
``--coordinator_address/--num_processes/--process_id``); see ``launch/README.md``.

A workdir that holds a checkpoint is resumed from it (the newest one whose checksums
verify; a corrupt one is moved to ``workdir/corrupt_checkpoints`` with a warning).

Exit statuses (constants in :mod:`mcjax.training.exit_codes`):

* 0: finished.
* 2 (``EXIT_BAD_INPUT``): one ``error:`` line per problem, no traceback: a bad flag or
  config field (also a misspelt field, a value of the wrong type, a flag given twice),
  bad data, batches larger than the data, a workdir that is a file, not writable, full
  (no space left: the last finished checkpoint is intact), in use by another run, or
  holding the run of another config or network (see "Runs survive interruptions" in
  the README for what may change on resume).
* 3 (``EXIT_NON_FINITE``): the loss or a gradient became NaN/inf; one ``error:`` line
  naming the step and phase. The last checkpoint (of a finite state) is intact.
* 75 (``EXIT_PREEMPTED``, EX_TEMPFAIL): stopped by SIGTERM or SIGINT after finishing the
  step and saving a checkpoint at it; run the same command again to resume.
* 1: anything unexpected (a traceback).
"""

import ast
import errno
import logging as std_logging
import os
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mcjax.data import sources
from mcjax.training import (
    checkpoint,
    distributed,
    exit_codes,
    loop,
    preemption,
    resume_rules,
    run_outputs,
    validation,
    workdir_lock,
)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_codes.EXIT_BAD_INPUT)


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


_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "digits.py"
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every error one ``error:`` line and exit status 2.

    absl would print a FATAL line and its usage (exit 1), and a misspelt config field
    escapes as a ``KeyError`` traceback with the suggestion buried in it.
    """
    repeated = _repeated_flag(argv)
    if repeated:
        _fail(f"{repeated} is given twice; give each flag once")
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))
    except (KeyError, AttributeError) as error:  # ml_collections: no such config field
        _fail(_unknown_field(error, argv))
    return argv  # not reached


def _workdir_problem(workdir: str) -> str | None:
    if not workdir.strip():
        return "--workdir is empty; it must name a directory (new, or of the run to resume)"
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        return f"--workdir {workdir} is a file; it must be a directory (new, or of a run)"
    return None


def _os_error_line(error: OSError, workdir: str) -> str | None:
    """One line for a full or unwritable disk; None for other OS errors (a bug: traceback)."""
    where = error.filename or workdir
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device writing {where} ({error.strerror}); the last "
            f"finished checkpoint in {os.path.join(workdir, 'checkpoints')} is intact: "
            "free space and run the same command again"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where} ({error.strerror}); --workdir must be a writable directory"
    return None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    workdir = os.path.join("runs", config.data.name) if _WORKDIR.value is None else _WORKDIR.value
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
        print(f"error: {error}", file=sys.stderr)
        sys.exit(exit_codes.EXIT_BAD_INPUT)
    try:  # every field, before anything is loaded or compiled
        validation.validate_config(config, num_devices=jax.device_count())
        resume_rules.check_workdir_matches(workdir, config, force=_FORCE_RESUME.value)
        mismatch = distributed.check_same_config(config.to_dict(), workdir)
        if mismatch:
            raise validation.ConfigError(mismatch)
    except validation.ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(exit_codes.EXIT_BAD_INPUT)
    logging.info("workdir %s", workdir)
    try:
        summary = loop.train_and_evaluate(config, workdir, force_resume=_FORCE_RESUME.value)
    except validation.ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(exit_codes.EXIT_BAD_INPUT)
    except (
        sources.DataError,
        checkpoint.CheckpointMismatch,
        workdir_lock.WorkdirBusy,
    ) as error:
        _fail(str(error))
    except OSError as error:
        line = _os_error_line(error, workdir)
        if line is None:
            raise
        _fail(line)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(exit_codes.EXIT_NON_FINITE)
    except preemption.Preempted as stopped:
        print(f"preempted: {stopped}", file=sys.stderr)
        sys.exit(exit_codes.EXIT_PREEMPTED)
    if jax.process_index() == 0:
        print(run_outputs.format_summary(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
