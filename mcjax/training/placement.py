"""Where a step's data goes: a data-parallel mesh over every device, and each process's rows.

On one device batches stay as they are (plain ``jit``); otherwise each process loads only
its rows of every global batch (:func:`mcjax.parallel.process_rows`) and
:class:`Placement` assembles them into global arrays on the mesh.
"""

from __future__ import annotations

import jax
from absl import logging

from mcjax import parallel
from mcjax.training import distributed

__all__ = ["Placement", "data_mesh"]


def data_mesh():
    """A data-parallel mesh over every device of the job, or None on one device (plain jit)."""
    mesh = None if jax.device_count() == 1 else parallel.make_mesh()
    logging.info("%s", distributed.describe(mesh))
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
