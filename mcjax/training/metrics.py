"""What a run reports while it trains: metrics records, the training log, and progress.

* :class:`MetricWriter`: records to ``metrics.jsonl`` and TensorBoard event files (no
  TensorFlow needed); :func:`read_records` reads them back.
* :class:`TrainLog`: the training metrics between two host syncs, buffered on device,
  checked for non-finite values, written.
* :class:`Progress`: a bar on a terminal, log lines otherwise, with speed and ETA.

Each part's own description follows at its section.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import jax
import numpy as np

from mcjax import masks, models, safe_files
from mcjax.training.schedule import Schedule

__all__ = [
    "MetricWriter",
    "Progress",
    "TrainLog",
    "mask_metrics",
    "read_records",
]


# --- Metrics records ------------------------------------------------------------------------
# Metrics to ``metrics.jsonl`` and TensorBoard event files (no TensorFlow needed).
#
# ``metrics.jsonl`` is appended in place through :func:`mcjax.safe_files.append_bytes` (a
# planted link or a directory there is an ``OSError``, never a write elsewhere); the event
# file's name ends in a random suffix, so no link can be planted where it will be written.


class MetricWriter:
    """Appends one JSON object per record and writes the scalars to TensorBoard.

    On a resumed run, records past the restored step are dropped first, so the
    file holds each step once.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb_directory = os.path.join(workdir, "tensorboard")
        self._tb = None
        if not enabled:
            return
        if os.path.exists(self.path):
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            safe_files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from tensorboardX import SummaryWriter

            # tensorboardX opens its file with open(path, "wb"), which follows a link: a
            # name nobody can guess is one nobody can plant.
            with self._naming_tensorboard():
                self._tb = SummaryWriter(
                    self._tb_directory, filename_suffix=f".{secrets.token_hex(8)}"
                )
        except ImportError:  # pragma: no cover - declared dependency
            self._tb = None

    def write(self, step: int, record: Mapping[str, float | int | str]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in record.items()}}
        safe_files.append_bytes(self.path, (json.dumps(record) + "\n").encode())
        if self._tb is not None:
            with self._naming_tensorboard():
                for key, value in record.items():
                    if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                        self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flushes and closes the event file (once; then a no-op)."""
        tb, self._tb = self._tb, None
        if tb is not None:
            with self._naming_tensorboard():
                tb.close()

    @contextlib.contextmanager
    def _naming_tensorboard(self):
        # tensorboardX's writes raise OSErrors that name no file.
        try:
            yield
        except OSError as error:
            if error.filename is not None or error.errno is None:
                raise
            raise OSError(error.errno, error.strerror, self._tb_directory) from error


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_records(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` file.

    A line that is not a JSON object (a torn last line, bytes that are not UTF-8 from
    a write cut by a crash) is skipped, so a run can always resume after one.
    """
    records = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


# --- Progress -------------------------------------------------------------------------------
# Progress of a long run: a bar on a terminal, log lines otherwise, with speed and ETA.


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """Reports ``step / total`` with images/s and the time left.

    Speed is measured over the last ``window`` updates of this process, so the
    first compilation is not counted, a later one (a new phase's step function)
    fades out after a few updates, and the ETA is right after a resume too.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        start_step: int,
        images_per_step: int,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        window: int = 10,
        enabled: bool = True,
    ):
        self.enabled = enabled  # False: other processes of a multi-process job stay quiet
        self.total = total_steps
        self.images_per_step = images_per_step
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=window + 1)
        self.start_time = time.time()

    def update(self, step: int, extra: str = "") -> str:
        """Reports that ``step`` steps are done; returns the line written."""
        now = time.time()
        if self._recent and step <= self._recent[-1][1]:
            self._recent.clear()  # went backwards: start measuring again
        self._recent.append((now, step))
        (t0, step0), (t1, step1) = self._recent[0], self._recent[-1]
        rate = (step1 - step0) / (t1 - t0) if step1 > step0 and t1 > t0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        fraction = step / max(self.total, 1)
        speed = f"{rate * self.images_per_step:,.0f} img/s" if rate > 0 else "-- img/s"
        left = _duration(eta) if rate > 0 else "--:--"
        if self.interactive:
            width = 30
            bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
            line = f"\r[{bar}] {step}/{self.total} {speed} ETA {left} {extra}".ljust(110)
        else:
            line = (
                f"step {step}/{self.total} ({100 * fraction:.1f}%) {speed} "
                f"elapsed {_duration(now - self.start_time)} ETA {left} {extra}"
            )
            line += "\n"
        if self.enabled:
            self.stream.write(line)
            self.stream.flush()
        return line.strip()

    def close(self) -> None:
        """Ends the bar's line (once: a second call does nothing)."""
        if self.interactive and self.enabled:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False


# --- The training log -----------------------------------------------------------------------
# The training metrics between two host syncs: buffered on device, checked, written.
#
# A step's metrics stay on the device until the host waits anyway (a log, an evaluation,
# a checkpoint, a phase end); :meth:`TrainLog.flush` then fetches them all at once, stops
# the run on a non-finite loss or gradient (fail fast, before anything is checkpointed),
# and writes one record: train loss/accuracy/gradient norm, learning rates, and the state
# of the masks (entropy, connections changed since the last record).


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
