"""The NNX variable types of MaskConnect's state, and the helpers its modules share.

* :class:`Mask`: the real-valued masks, an ``nnx.Param`` (trained, clipped SGD).
* :class:`Connectivity`: fixed binary masks no optimizer trains.
* :class:`Frozen`: whether a layer's masks are frozen (a ``Connectivity``, so that
  ``nnx.state(model, Connectivity)`` is all of the fixed connectivity state).

Re-exported by :mod:`mcjax.nnx`; see its docstring and docs/flax.md.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mcjax import connectivity as connectivity_policy

Array = jax.Array

__all__ = ["MASKS_STREAM", "Connectivity", "Frozen", "Mask"]

MASKS_STREAM = "masks"


class Mask(nnx.Param):
    """Real-valued connectivity masks ``[..., C_out, C_in]``, entries in ``[0, 1]``.

    Found by :func:`mcjax.maskconnect` by this type, under any attribute name: the
    labels found in ``tx.init`` are recorded in the optimizer state for ``tx.update``
    (where ``nnx.Optimizer`` passes plain arrays).
    """


class Connectivity(nnx.Variable):
    """Fixed binary masks ``[..., C_out, C_in]``: state, never trained.

    ``random`` mode's draw; ``learned`` (``real``) mode's connectivity recorded by
    ``freeze()``: the top-K (the real-valued masks) at that moment, or the one given.
    """


class Frozen(Connectivity):
    """Whether a layer's masks are frozen: a bool (``[L]`` in an ``nnx.vmap`` stack)."""


def rng_stream(rngs: nnx.Rngs | nnx.RngStream | None):
    # As nnx.Dropout: keep a forked stream of our own, so the caller's Rngs is not shared.
    # An Rngs without a "masks" (or default) stream is fine for evaluation: a training
    # call then asks for one.
    if isinstance(rngs, nnx.Rngs):
        if MASKS_STREAM in rngs or "default" in rngs:
            return rngs[MASKS_STREAM].fork()
        return nnx.data(None)
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return nnx.data(None)
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs)}")


def key_source(stored, rngs) -> Callable[[], Array] | None:
    """A function drawing the key of a forward pass (the call's ``rngs`` first), or None."""
    if rngs is not None:
        if isinstance(rngs, nnx.Rngs):
            if MASKS_STREAM not in rngs and "default" not in rngs:
                raise ValueError("rngs has no 'masks' (or default) stream to draw masks from")
            return rngs[MASKS_STREAM]
        if isinstance(rngs, nnx.RngStream):
            return rngs
        return lambda: rngs  # a key
    return stored


def set_flag(variable: nnx.Variable, value: bool) -> None:
    variable[...] = jnp.full(jnp.shape(variable[...]), value, jnp.bool_)


def is_frozen(flag: nnx.Variable | None) -> bool:
    value = connectivity_policy.concrete_bool(None if flag is None else jnp.all(flag[...]))
    if value is None:
        raise ValueError("is_frozen needs concrete variables: ask outside jit")
    return value
