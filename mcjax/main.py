r"""Trains MaskConnect with the paper's four-phase protocol.

    python -m mcjax.main                                   # digits quick start
    python -m mcjax.main --config configs/cifar100.py --workdir runs/c100 \
        --config.model.arch=29,8,8 --config.model.fan_in=4

Several processes (hosts, or one per GPU) run the same command; they join with
``jax.distributed`` (auto-detected on SLURM and Cloud TPU, or given by
``--coordinator_address/--num_processes/--process_id``); see ``launch/README.md``.

A workdir that holds a checkpoint is resumed from it (the newest one whose checksums
verify; a corrupt one is moved to ``workdir/corrupt_checkpoints`` with a warning).

Exit statuses (constants in :mod:`mcjax.training.preemption`):

* 0: finished.
* 2 (``EXIT_BAD_INPUT``): a bad config field or bad data; one ``error:`` line per problem.
* 3 (``EXIT_NON_FINITE``): the loss or a gradient became NaN/inf; one ``error:`` line
  naming the step and phase. The last checkpoint (of a finite state) is intact.
* 75 (``EXIT_PREEMPTED``, EX_TEMPFAIL): stopped by SIGTERM or SIGINT after finishing the
  step and saving a checkpoint at it; run the same command again to resume.
* 1: anything unexpected (a traceback).
"""

import logging as std_logging
import os
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mcjax.data import sources
from mcjax.training import distributed, loop, preemption, run_outputs, validation

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "digits.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_DEFAULT_CONFIG), "Training config file.", lock_config=True
)
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", config.data.name)
    try:  # before anything touches a device
        distributed.initialize(
            _DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(preemption.EXIT_BAD_INPUT)
    try:  # every field, before anything is loaded or compiled
        validation.validate_config(config, num_devices=jax.device_count())
        validation.check_workdir_matches(workdir, config, force=_FORCE_RESUME.value)
        mismatch = distributed.check_same_config(config.to_dict(), workdir)
        if mismatch:
            raise validation.ConfigError(mismatch)
    except validation.ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(preemption.EXIT_BAD_INPUT)
    logging.info("workdir %s", workdir)
    try:
        summary = loop.train_and_evaluate(config, workdir)
    except sources.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(preemption.EXIT_BAD_INPUT)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(preemption.EXIT_NON_FINITE)
    except preemption.Preempted as stopped:
        print(f"preempted: {stopped}", file=sys.stderr)
        sys.exit(preemption.EXIT_PREEMPTED)
    if jax.process_index() == 0:
        print(run_outputs.format_summary(summary))


if __name__ == "__main__":
    app.run(main)
