"""Checkpoints of the training state with orbax's ``CheckpointManager``.

Each checkpoint holds the whole state (step, params, BN statistics, optimizer
state, fixed connectivity) and a JSON ``meta`` item (phase, model config, PRNG
settings). The PRNG keys are not stored: every draw is a pure function of
``config.seed`` and the step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(max(1, keep)),
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; :meth:`wait` before relying on it."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the structure, shapes and shardings of ``abstract_state``."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
