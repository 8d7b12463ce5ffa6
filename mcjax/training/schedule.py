"""The four phases in steps, their learning rates, and the optimizer (docs/design.md §5-6).

Built from explicit numbers; :class:`mcjax.training.config.ScheduleConfig` passes a config's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import optax

from mcjax import optim

__all__ = ["Schedule", "learning_rates", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Phase lengths in steps: the one place where epochs become steps."""

    steps_per_epoch: int
    phase_steps: tuple[int, ...]

    @classmethod
    def from_epochs(
        cls, phase_epochs: Sequence[float], *, num_train: int, batch_size: int
    ) -> Schedule:
        """Each phase's epochs in steps of ``batch_size`` over ``num_train`` examples (the
        last partial batch of an epoch is dropped; a phase has at least one step)."""
        steps_per_epoch = num_train // int(batch_size)
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {num_train} training examples"
            )
        phase_steps = tuple(max(1, round(float(e) * steps_per_epoch)) for e in phase_epochs)
        return cls(steps_per_epoch, phase_steps)

    @property
    def phase_ends(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum(self.phase_steps))

    @property
    def total_steps(self) -> int:
        return self.phase_ends[-1]

    def phase(self, step: int) -> int:
        """Phase (1-based) of the step about to run."""
        return 1 + int(np.searchsorted(np.asarray(self.phase_ends), step, side="right"))

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


def learning_rates(
    schedule: Schedule, *, weight_learning_rates: Sequence[float], mask_learning_rate: float
) -> tuple[optax.Schedule, optax.Schedule]:
    """Weights: one rate per phase; masks: ``mask_learning_rate`` in phase 1, then 0."""
    if len(weight_learning_rates) != len(schedule.phase_steps):
        raise ValueError("need one weight learning rate per phase")
    ends = list(schedule.phase_ends)

    def piecewise(values, boundaries):
        return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)

    return (
        piecewise(weight_learning_rates, ends[:-1]),
        piecewise([mask_learning_rate, 0.0], ends[:1]),
    )


def make_optimizer(
    schedule: Schedule,
    *,
    weight_learning_rates: Sequence[float],
    mask_learning_rate: float,
    weight_decay: float,
    momentum: float,
    decay_norm_and_bias: bool,
) -> optax.GradientTransformation:
    """The :func:`mcjax.optim.maskconnect` optimizer with the rates of :func:`learning_rates`."""
    weights_lr, masks_lr = learning_rates(
        schedule,
        weight_learning_rates=weight_learning_rates,
        mask_learning_rate=mask_learning_rate,
    )
    return optim.maskconnect(
        weight_learning_rate=weights_lr,
        mask_learning_rate=masks_lr,
        weight_decay=weight_decay,
        momentum=momentum,
        decay_norm_and_bias=decay_norm_and_bias,
    )
