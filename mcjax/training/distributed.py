"""Joining a multi-process job (``jax.distributed``), agreeing across processes, placing data.

JAX's multi-controller runtime runs one Python process per host (or per GPU); each
runs the same program on its local devices and they meet in collectives. This
module starts that runtime and provides the few host-side agreements the training
loop needs: that every process runs the same config, and whether any process was
asked to stop. With one process every function is a cheap local no-op, so the
single-host path needs no special cases."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mcjax import parallel

__all__ = [
    "MODES",
    "Placement",
    "any_process",
    "barrier",
    "check_same_config",
    "data_mesh",
    "describe",
    "initialize",
    "is_cluster_environment",
]


MODES = ("auto", "on", "off")


def is_cluster_environment(environ: dict[str, str] | None = None) -> bool:
    """True where ``jax.distributed.initialize()`` finds a multi-process job by itself.

    SLURM with several tasks, a Cloud TPU VM slice with several workers, or JAX's own
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``).
    """
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    workers = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([w for w in workers.split(",") if w.strip()]) > 1


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the job before anything touches a device; returns whether it did.

    Args:
      mode: ``"off"``: never (one process); ``"on"``: always, auto-detecting the
        cluster unless the arguments below are given; ``"auto"``: when the
        arguments are given or :func:`is_cluster_environment`.
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes, process_id: this job's size and this process's index.

    Raises:
      ValueError: an unknown mode, explicit arguments given only in part, or
        ``mode="off"`` with explicit arguments.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    explicit = (coordinator_address, num_processes, process_id)
    given = [x is not None for x in explicit]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id go together; got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}"
        )
    if mode == "off":
        if any(given):
            raise ValueError("--distributed=off contradicts --coordinator_address")
        return False
    if all(given):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    if mode == "on" or is_cluster_environment():
        jax.distributed.initialize()  # SLURM / TPU / JAX_* variables
        return True
    return False


def describe(mesh=None) -> str:
    """One line for the start-up log: process, host, local/global devices, mesh."""
    local = jax.local_devices()
    kinds = sorted({d.device_kind for d in local})
    line = (
        f"process {jax.process_index()} of {jax.process_count()} on {socket.gethostname()}: "
        f"{len(local)} local / {jax.device_count()} global {jax.default_backend()} devices "
        f"({', '.join(kinds)})"
    )
    if mesh is not None:
        axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
        line += f"; mesh {axes}"
    else:
        line += "; no mesh (one device)"
    return line


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process; every process must call it at the same point.

    Costs one small all-gather (and a host sync) with several processes, nothing with one.
    """
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
    return bool(np.asarray(flags).any())


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _digest(obj) -> np.ndarray:
    text = json.dumps(obj, sort_keys=True, default=str)
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()


def check_same_config(config_dict: dict, workdir: str) -> list[str]:
    """Problems if the processes were started with different configs or workdirs.

    Every process must call it at start-up; each gets the same list, so they all
    stop together on a mismatch instead of hanging in a collective later.
    """
    if jax.process_count() == 1:
        return []
    ours = np.stack([_digest(config_dict), _digest(workdir)])
    every = np.asarray(multihost_utils.process_allgather(ours))  # [processes, 2, 32]
    problems = []
    for index in range(every.shape[0]):
        for which, name in ((0, "config"), (1, "workdir")):
            if not np.array_equal(every[index, which], every[0, which]):
                problems.append(
                    f"process {index} was started with another {name} than process 0; "
                    "every process must run the same command"
                )
    return problems


# --- Placement: where a step's data goes ----------------------------------------------------
# Where a step's data goes: a data-parallel mesh over every device, and each process's rows.
#
# On one device batches stay as they are (plain ``jit``); otherwise each process loads only
# its rows of every global batch (:func:`mcjax.parallel.process_rows`) and
# :class:`Placement` assembles them into global arrays on the mesh.


def data_mesh():
    """A data-parallel mesh over every device of the job, or None on one device (plain jit)."""
    mesh = None if jax.device_count() == 1 else parallel.make_mesh()
    logging.info("%s", describe(mesh))
    return mesh


class Placement:
    """Where batches go: this process's rows of each global batch, as global arrays."""

    def __init__(self, mesh, batch_size: int, eval_batch_size: int):
        self.mesh = mesh
        self.sizes = {"train": batch_size, "eval": eval_batch_size}
        whole = slice(None)
        self.rows = {
            kind: whole if mesh is None else parallel.process_rows(mesh, size)
            for kind, size in self.sizes.items()
        }

    def __call__(self, kind: str, local):
        if self.mesh is None:
            return local
        return parallel.global_batch(self.mesh, local, self.sizes[kind])
