"""Metrics to ``metrics.jsonl`` and TensorBoard event files (no TensorFlow needed).

``metrics.jsonl`` is appended in place through :func:`mcjax.safe_files.append_bytes` (a
planted link or a directory there is an ``OSError``, never a write elsewhere); the event
file's name ends in a random suffix, so no link can be planted where it will be written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Mapping

from mcjax import safe_files


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
