"""The paper's own numbers (Tables 1, 3, 4 and Sec. 3.1), for the column beside ours.

Keyed by ``(dataset, arch, connectivity, K)`` (``K`` is ``None`` for ``full``, the
paper's "Fixed-Full, K=8"): a row of a sweep gets the paper's number of the same setting,
whichever preset or grid produced it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """Top-1 accuracy in percent over the paper's 4 runs, and its parameter counts."""

    source: str
    best: float
    mean: float | None = None
    std: float | None = None
    params_train: str | None = None
    params_test: str | None = None
    note: str = ""

    def top1(self) -> str:
        """``"73.52 (73.37 ± 0.13)"`` as the paper prints it."""
        if self.mean is None:
            return f"{self.best:.2f}{' ' + self.note if self.note else ''}"
        return f"{self.best:.2f} ({self.mean:.2f} ± {self.std:.2f})"


def _table(source, dataset, rows) -> dict:
    out = {}
    for arch, connectivity, k, best, mean, std, *params in rows:
        train, test = params or (None, None)
        out[(dataset, arch, connectivity, k)] = PaperResult(source, best, mean, std, train, test)
    return out


RESULTS: dict[tuple, PaperResult] = {
    **_table(
        "Table 1",
        "cifar100",
        [
            ("29,8,8", "full", None, 73.52, 73.37, 0.13, "0.86M", "0.86M"),
            ("29,8,8", "learned", 1, 73.91, 73.76, 0.14, "0.86M", "0.65M"),
            ("29,8,8", "learned", 4, 75.89, 75.77, 0.12, "0.86M", "0.81M"),
            ("29,8,8", "random", 4, 72.85, 72.66, 0.24, "0.86M", "0.85M"),
            ("29,64,8", "full", None, 82.23, 82.12, 0.12, "34.4M", "34.4M"),
            ("29,64,8", "learned", 1, 82.31, 82.15, 0.15, "34.4M", "20.5M"),
            ("29,64,8", "learned", 4, 84.05, 83.94, 0.11, "34.4M", "32.1M"),
            ("29,64,8", "random", 4, 81.96, 81.73, 0.20, "34.4M", "34.3M"),
        ],
    ),
    **_table(
        "Table 3",
        "cifar10",
        [
            ("20,4,8", "full", None, 91.39, 91.13, 0.11),
            ("20,4,8", "learned", 4, 92.85, 92.76, 0.10),
            ("29,4,8", "full", None, 92.77, 92.65, 0.09),
            ("29,4,8", "learned", 4, 93.88, 93.76, 0.12),
            ("29,8,8", "full", None, 93.26, 93.14, 0.11),
            ("29,8,8", "learned", 4, 95.11, 94.96, 0.12),
            ("29,64,8", "full", None, 96.35, 96.23, 0.12),
            ("29,64,8", "learned", 4, 96.83, 96.73, 0.11),
        ],
    ),
    **_table(
        "Table 4",
        "mini_imagenet",
        [
            ("20,4,8", "full", None, 62.12, 61.86, 0.15),
            ("20,4,8", "learned", 4, 66.09, 65.94, 0.16),
            ("20,4,8", "random", 4, 62.42, 61.81, 0.32),
            ("29,8,8", "full", None, 68.11, 67.89, 0.19),
            ("29,8,8", "learned", 4, 71.36, 71.18, 0.19),
            ("29,8,8", "random", 4, 67.97, 67.53, 0.20),
        ],
    ),
    # Sec. 3.1 gives only the gap: "the best accuracy achieved with real-valued masks is
    # 1.93% worse compared to that obtained with binary masks" for {29,8,8}; taking the
    # binary best as Table 1's Learned K=4 (75.89) is our reading.
    ("cifar100", "29,8,8", "real", 4): PaperResult(
        "Sec. 3.1", round(75.89 - 1.93, 2), note="(best only: 1.93 below Learned K=4)"
    ),
}


def lookup(describe: dict) -> PaperResult | None:
    """The paper's result for a run's ``describe`` (see :class:`mcjax.sweeps.plan.Run`)."""
    key = (describe["dataset"], describe["arch"], describe["connectivity"], describe["fan_in"])
    return RESULTS.get(key)
