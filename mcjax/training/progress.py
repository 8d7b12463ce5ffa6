"""Progress of a long run: a bar on a terminal, log lines otherwise, with speed and ETA."""

from __future__ import annotations

import collections
import sys
import time
from typing import TextIO


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
