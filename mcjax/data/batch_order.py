"""Host-side batch order (numpy): which examples each training and evaluation batch holds.

Guarantees:

* Data order is a pure function of ``(seed, step)``: :func:`train_batch_indices`
  walks :func:`epoch_permutation` ``(seed, epoch)`` in ``n // batch_size`` steps per
  epoch (the remainder of each epoch is dropped), so a run resumed at any step sees
  the same batches.
* :func:`eval_batches` pads the last batch and marks the padding invalid, so every
  test example is counted exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

__all__ = ["epoch_permutation", "eval_batches", "train_batch_indices", "train_rows"]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    # A SeedSequence of the pair: distinct (seed, epoch) give independent streams.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    order = rng.permutation(n)
    order.setflags(write=False)  # shared by the cache
    return order


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """int64 ``[n]``: the order of the training examples in ``epoch``; a pure function
    of ``(seed, epoch, n)`` (numpy's PCG64 seeded by ``SeedSequence([seed, epoch])``)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
    return _permutation(int(seed), int(epoch), int(n)).copy()


def train_batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """int64 ``[batch_size]``: training-example indices of global batch ``step``.

    ``steps_per_epoch = n // batch_size`` (the last partial batch of each epoch is
    dropped); ``epoch = step // steps_per_epoch`` and the batch is the
    ``step % steps_per_epoch``-th slice of :func:`epoch_permutation`. Within an epoch
    no index repeats. Pure function of ``(seed, step, n, batch_size)``.
    """
    if batch_size <= 0 or batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, within = divmod(int(step), n // batch_size)
    order = _permutation(int(seed), epoch, int(n))
    return order[within * batch_size : (within + 1) * batch_size].copy()


def train_rows(
    seed: int, step: int, n: int, batch_size: int, rows: slice
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, positions)``, int64 each: the ``rows`` of global batch ``step``.

    ``indices`` are the examples (:func:`train_batch_indices`) and ``positions`` their
    places in the global batch, which an example's augmentation depends on; a process
    that holds ``rows`` of every global batch asks for exactly these.
    """
    indices = train_batch_indices(seed, step, n, batch_size)
    return indices[rows], np.arange(batch_size)[rows]


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices int32 [batch_size], valid bool [batch_size])`` covering ``range(n)``.

    Batches are in order; the last one is padded with index 0 and marked invalid
    there, so summing ``valid``-weighted results counts every example exactly once
    while every batch keeps one shape (one compilation).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        indices = np.zeros((batch_size,), np.int32)
        indices[:count] = np.arange(start, start + count, dtype=np.int32)
        valid = np.zeros((batch_size,), bool)
        valid[:count] = True
        yield indices, valid
