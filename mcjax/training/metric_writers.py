"""Metrics to ``metrics.jsonl`` and TensorBoard event files (no TensorFlow needed)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping


class MetricWriter:
    """Appends one JSON object per record and writes the scalars to TensorBoard.

    On a resumed run, records past the restored step are dropped first, so the
    file holds each step once.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        if os.path.exists(self.path):
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # pragma: no cover - declared dependency
            self._tb = None

    def write(self, step: int, record: Mapping[str, float | int | str]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in record.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
