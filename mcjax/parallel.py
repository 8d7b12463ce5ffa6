"""Data parallelism over a device mesh with ``jax.shard_map``.

The global batch is split over the mesh's ``"data"`` axis; parameters, optimizer
state and BN statistics are replicated. Inside the mapped step, BN statistics
are averaged over the axis (synchronised BN) and so are the gradients, so a step
on N devices computes what one device computes on the whole batch (up to
floating-point summation order). The binary masks of a step are sampled from the
step's key, which every device derives identically, so they are the same on
every device.

The mesh spans every device of the job. With several processes each one loads
only its rows of the global batch (:func:`process_rows`) and :func:`global_batch`
assembles the global array from them
(``jax.make_array_from_process_local_data``); the mapped step is the same.

Parameters are replicated (``P()``): models of this size fit on one device.
Sharding them (FSDP-style) would go in :func:`state_sharding`, with the
optimizer state following the parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "data_parallel_eval_step",
    "data_parallel_train_step",
    "global_batch",
    "make_mesh",
    "process_rows",
    "state_sharding",
]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (default: every device of the job)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def state_sharding(mesh: Mesh) -> NamedSharding:
    """Replicated: where parameter sharding would go for larger models."""
    return NamedSharding(mesh, P())


def process_rows(mesh: Mesh, global_batch: int) -> slice:
    """The rows of a global batch that this process's devices hold (and so load).

    Contiguous for a mesh over ``jax.devices()`` (ordered by process); each process
    loads ``global_batch / process_count`` examples.
    """
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted(idx[0].indices(global_batch)[:2] for idx in index_map.values())
    start, stop = starts[0][0], starts[-1][1]
    if stop - start != sum(b - a for a, b in starts):
        raise ValueError(f"this process's rows of the batch are not contiguous: {starts}")
    return slice(start, stop)


def global_batch(mesh: Mesh, local: Any, global_size: int) -> Any:
    """A global array (leading axis ``global_size``, split over the data axis) from this
    process's rows (:func:`process_rows`) of every leaf of ``local``."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x, (global_size, *x.shape[1:])),
        local,
    )


def data_parallel_train_step(train_step, mesh: Mesh, **static):
    """``jit(shard_map(train_step))`` with the state replicated and the batch split.

    Args:
      train_step: :func:`mcjax.training.steps.train_step` (it takes ``axis_name``).
      mesh: from :func:`make_mesh`.
      **static: ``net``, ``tx``, ``key``, ``frozen`` for ``train_step``.

    Returns:
      ``step(state, images, labels) -> (state, metrics)``, the state donated.
    """
    step = functools.partial(train_step, axis_name=DATA_AXIS, **static)
    mapped = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)), out_specs=(P(), P())
    )
    return jax.jit(mapped, donate_argnums=0)


def data_parallel_eval_step(eval_step, mesh: Mesh, **static):
    """``jit(shard_map(eval_step))``: per-device sums, added over the data axis."""

    def step(state, images, labels, valid):
        sums = eval_step(state, images, labels, valid, **static)
        return jax.tree.map(lambda x: jax.lax.psum(x, DATA_AXIS), sums)

    mapped = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)), out_specs=P()
    )
    return jax.jit(mapped)
