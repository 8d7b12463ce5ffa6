"""Checks of what enters mcjax: a fan-in, the options of a Flax layer, a connectivity.

Each refuses bad input with one sentence that names what is wrong (``TypeError`` for a
wrong kind of value, ``ValueError`` for a wrong value):

* :func:`check_fan_in`: K is an integer (not ``2.0``, not ``True``) in ``[1, C_in]``; the
  modules call it when they are built, so that a bad K never reaches a forward pass.
* :func:`check_connectivity` / :func:`check_k_hot`: a connectivity given to
  :func:`mcjax.apply`, :func:`mcjax.prune.drop_dead_blocks` or a Flax layer's ``freeze``
  has the network's shapes, is binary and has K ones per row. Shapes are static and always
  checked; values when concrete, or under ``jit`` in the :func:`checked` mode
  (``jax.experimental.checkify``), so that a jitted step pays nothing otherwise.
"""

from __future__ import annotations

import contextvars
import functools
import operator
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

# The connectivity modes and aggregations a network or a Flax layer accepts; declared here,
# below mcjax.models (which checks its own fields with them and exports them), so that
# check_layer_options need not import the models.
CONNECTIVITIES = ("learned", "full", "random", "real")
AGGREGATIONS = ("sum", "mean")

__all__ = [
    "AGGREGATIONS",
    "CONNECTIVITIES",
    "check_connectivity",
    "check_fan_in",
    "check_k_hot",
    "check_layer_options",
    "checked",
    "layer_fan_in",
    "positive_int",
]


def check_fan_in(fan_in, num_inputs: int | None = None, *, name: str = "fan_in") -> int:
    """``fan_in`` (K) as a Python int, or a one-sentence error at construction.

    K must be an integer (``np.int64`` and anything with ``__index__`` too, never a
    ``bool`` or a float such as ``2.0``) with ``1 <= K <= num_inputs`` when
    ``num_inputs`` is known. The modules of :mod:`mcjax.nnx`, :mod:`mcjax.linen` and
    :class:`mcjax.models.Network` call it when they are built.
    """
    if isinstance(fan_in, bool) or fan_in is None:
        raise TypeError(f"{name} (K, inputs per block) must be an integer, got {fan_in!r}")
    try:
        value = operator.index(fan_in)
    except TypeError:
        raise TypeError(
            f"{name} (K, inputs per block) must be an integer, got "
            f"{type(fan_in).__name__} {fan_in!r}"
        ) from None
    if value < 1 or (num_inputs is not None and value > num_inputs):
        bound = "" if num_inputs is None else f" <= C = {num_inputs}"
        raise ValueError(f"{name} K must satisfy 1 <= K{bound}, got {value}")
    return value


_CHECKED = contextvars.ContextVar("mcjax_checked_connectivity", default=False)


def checked(fn: Callable) -> Callable:
    """``fn`` in the checked mode: connectivity checks also run on traced values.

    Outside ``jit`` (concrete arrays) :func:`check_connectivity` always runs and raises
    a ``ValueError``; under ``jit`` the values are not known at trace time, so the
    checks of the values (binary, K ones per row) are skipped, which costs nothing.
    ``checked(fn)`` traces ``fn`` with those checks staged through
    ``jax.experimental.checkify`` and returns ``(error, out)``; call ``error.throw()``
    to raise the first failed check::

        step = jax.jit(mcjax.checks.checked(train_step))
        error, out = step(params, images, connectivity)
        error.throw()   # e.g. "connectivity of module 2 is not binary (K-hot) ..."

    Shapes and the number of modules are static: they are checked in every mode.
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _CHECKED.set(True)
        try:
            return checkified(*args, **kwargs)
        finally:
            _CHECKED.reset(token)

    return wrapper


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_one(mask, k: int | None, *, where: str, binary: bool) -> None:
    """Values of one ``[C_out, C_in]`` mask: binary with ``k`` ones per row."""
    hint = "pass K-hot masks, e.g. mcjax.masks.top_k(real_masks, K), not the real-valued masks"
    if _is_traced(mask):
        if not _CHECKED.get():
            return
        if binary:
            checkify.check(
                jnp.all((mask == 0) | (mask == 1)),
                f"{where} is not binary (K-hot): {hint}",
            )
            if k is not None:
                checkify.check(
                    jnp.all(mask.sum(-1) == k),
                    f"{where} has a row without exactly K = {k} ones (the network's fan_in)",
                )
        return
    values = np.asarray(mask)
    if binary:
        bad = np.argwhere((values != 0) & (values != 1))
        if bad.size:
            index = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"{where} is not binary (K-hot): entry {list(index)} is {values[index]:.4g}; {hint}"
            )
        if k is not None:
            ones = values.sum(-1)
            rows = np.argwhere(ones != k)
            if rows.size:
                row = tuple(int(i) for i in rows[0])
                raise ValueError(
                    f"{where} has {int(ones[row])} ones in row {list(row)}, but every "
                    f"block reads K = {k} inputs (the network's fan_in)"
                )
    elif not np.all(np.isfinite(values)):
        raise ValueError(f"{where} has non-finite entries")


def check_connectivity(
    connectivity: Array | Sequence[Array],
    shapes: Sequence[tuple[int, int]],
    *,
    k: int | None,
    binary: bool = True,
    name: str = "connectivity",
) -> None:
    """Refuses a connectivity that is not the network's, in one sentence.

    Args:
      connectivity: ``[L-1, C_out, C_in]`` or a sequence of per-module ``[C_i, C_{i-1}]``
        masks (numpy, jax, concrete or traced).
      shapes: the network's ``(C_i, C_{i-1})`` for modules ``2..L``.
      k: the fan-in every row must have (``None``: any).
      binary: whether the entries must be 0 or 1 (False for ``real`` mode).
      name: how the message calls it.

    The number of modules and the shapes are checked always (they are static); the
    values when concrete, or under ``jit`` in :func:`checked` mode (skipped otherwise,
    so a jitted step pays nothing). Raises ``ValueError``.
    """
    if hasattr(connectivity, "shape") and jnp.ndim(connectivity) != 3:
        raise ValueError(
            f"{name} must be [L-1, C_out, C_in] or a list of per-module [C_i, C_(i-1)] "
            f"masks, got shape {tuple(jnp.shape(connectivity))}"
        )
    if hasattr(connectivity, "shape") and not _is_traced(connectivity):
        # Concrete: look at the values once, on the host (indexing a concrete jax array
        # inside a trace would give a tracer).
        connectivity = np.asarray(connectivity)
    if len(connectivity) != len(shapes):
        raise ValueError(
            f"{name} has masks for {len(connectivity)} modules, but the network needs "
            f"{len(shapes)} (one per module after the first)"
        )
    for index, expected in enumerate(shapes):
        mask = connectivity[index]
        where = f"{name} of module {index + 2}"
        if tuple(jnp.shape(mask)) != tuple(expected):
            raise ValueError(
                f"{where} has shape {tuple(jnp.shape(mask))}, but the network needs "
                f"{tuple(expected)} ([C_{index + 2}, C_{index + 1}])"
            )
        _check_one(mask, k, where=where, binary=binary)


def check_k_hot(mask, k: int | None, *, name: str = "connectivity", binary: bool = True) -> None:
    """One ``[..., C_out, C_in]`` mask: binary with ``k`` ones per row (see
    :func:`check_connectivity`; values concrete, or traced in :func:`checked` mode)."""
    _check_one(mask, k, where=name, binary=binary)


def layer_fan_in(fan_in, num_inputs: int | None, connectivity: str) -> int | None:
    """K of a generic Flax layer: required for every mode but ``full`` (which reads every
    input and ignores it); no default, as K is a choice of the model."""
    if fan_in is None:
        if connectivity == "full":
            return None
        raise TypeError(
            f"fan_in= (K, the inputs each block reads) is required for connectivity "
            f"{connectivity!r}; it has no default, as K is a choice of your model"
        )
    return check_fan_in(fan_in, num_inputs)


def check_layer_options(connectivity: str, aggregation: str, mask_init: float) -> None:
    """The mode, aggregation and mask initial value of a Flax layer."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not 0.0 <= mask_init <= 1.0:
        raise ValueError(f"mask_init must lie in [0, 1], got {mask_init}")


def positive_int(value, name: str) -> int:
    """``value`` as a Python int >= 1 (a count: branches, inputs, outputs)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value
