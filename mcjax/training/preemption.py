"""Stopping a run cleanly on SIGTERM / SIGINT, and the exit statuses of ``mcjax.main``.

A scheduler that preempts a job sends SIGTERM (Ctrl-C sends SIGINT). While
:class:`StopRequests` is active, the first such signal only sets a flag; the
training loop checks it after each step, finishes the step, flushes the
metrics, saves a checkpoint at that step, waits for the save, closes its
writers and raises :class:`Preempted`; ``mcjax.main`` then exits with
:data:`EXIT_PREEMPTED`. Running the same command again resumes. A second
SIGINT raises ``KeyboardInterrupt`` at once (the last finished checkpoint
stays restorable; orbax ignores an interrupted save).
"""

from __future__ import annotations

import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int, signal_name: str, directory: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint saved in {directory}; "
            "run the same command again to resume"
        )


class StopRequests:
    """Context manager: turns SIGTERM/SIGINT into a flag (``requested``, ``signal_name``).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
