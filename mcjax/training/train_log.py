"""The training metrics between two host syncs: buffered on device, checked, written.

A step's metrics stay on the device until the host waits anyway (a log, an evaluation,
a checkpoint, a phase end); :meth:`TrainLog.flush` then fetches them all at once, stops
the run on a non-finite loss or gradient (fail fast, before anything is checkpointed),
and writes one record: train loss/accuracy/gradient norm, learning rates, and the state
of the masks (entropy, connections changed since the last record).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from mcjax import masks, models
from mcjax.training.metric_writers import MetricWriter
from mcjax.training.progress import Progress
from mcjax.training.schedule import Schedule

__all__ = ["TrainLog", "mask_metrics"]


def mask_metrics(net: models.Network, real_masks, previous_top_k):
    """``(record, top_k)``: entropy, range and connections changed since ``previous_top_k``."""
    if not net.has_masks:
        return {}, previous_top_k
    current = np.asarray(masks.top_k(real_masks, net.fan_in))
    changed = 0 if previous_top_k is None else int((current != previous_top_k).sum()) // 2
    return {
        "masks/entropy": float(masks.mean_entropy(real_masks)),
        "masks/changed": changed,
        "masks/min": float(real_masks.min()),
        "masks/max": float(real_masks.max()),
    }, current


class TrainLog:
    """Buffers each step's metrics; :meth:`flush` checks and writes them.

    Args:
      net: the network (for the mask metrics).
      schedule: the phases (epoch and phase of a record).
      learning_rates: ``(weights, masks)`` schedules, recorded per record.
      writer, progress: where records and progress lines go.
      on_non_finite: called before the ``FloatingPointError`` is raised (the run waits for
        its last checkpoint, of a finite state, to finish); returns what the error adds
        (where that checkpoint is).
    """

    def __init__(
        self,
        net: models.Network,
        schedule: Schedule,
        learning_rates,
        *,
        writer: MetricWriter,
        progress: Progress,
        on_non_finite: Callable[[], str],
    ):
        self.net, self.schedule, self.writer, self.progress = net, schedule, writer, progress
        self.weights_lr, self.masks_lr = learning_rates
        self.on_non_finite = on_non_finite
        self.pending: list[dict] = []
        self.previous_top_k = None

    def add(self, metrics: dict) -> None:
        """One step's device metrics (``loss``, ``accuracy``, ``grad_norm``)."""
        self.pending.append(metrics)

    def flush(self, step: int, params: dict) -> None:
        """Fetches the buffered metrics and writes their record at ``step``.

        Raises:
          FloatingPointError: a loss or gradient norm is NaN/inf, naming the step and phase.
        """
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        self.pending.clear()
        losses = np.array([m["loss"] for m in fetched])
        finite = np.isfinite(losses) & np.isfinite([m["grad_norm"] for m in fetched])
        if not finite.all():
            bad = step - len(fetched) + int(np.argmin(finite))
            note = self.on_non_finite()
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad} (phase {self.schedule.phase(bad)}); "
                f"{note}"
            )
        record = {
            "epoch": round(self.schedule.epoch(step), 4),
            "phase": self.schedule.phase(step - 1),
            "train/loss": float(losses.mean()),
            "train/accuracy": float(np.mean([m["accuracy"] for m in fetched])),
            "train/grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "lr/weights": float(self.weights_lr(step - 1)),
            "lr/masks": float(self.masks_lr(step - 1)) if self.net.has_masks else 0.0,
        }
        mask_stats, self.previous_top_k = mask_metrics(
            self.net, params.get("masks"), self.previous_top_k
        )
        record.update(mask_stats)
        self.writer.write(step, record)
        self.progress.update(step, f"phase {record['phase']} loss {record['train/loss']:.3f}")
