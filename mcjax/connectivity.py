"""Which masks a step uses: the one connectivity policy of training, evaluation and export.

``Network.connectivity`` is the *mode* (a string: ``learned``, ``full``, ``random``,
``real``); the *masks* are arrays. Whether the masks still learn is part of the
training state (``TrainState.masks_frozen``, checkpointed with it), so a resumed run
cannot skip the phase-2 freeze: :func:`must_freeze` is asked before every step and
is true at the first step of phase 2 or later whose state is not frozen yet, however
the run got there.

=========  ==========================  ==================================
mode       masks learn (phase 1)       masks frozen (phases 2-4), and eval
=========  ==========================  ==================================
learned    K-hot sampled every step    the fixed top-K taken at the freeze
                                       (eval before it: top-K of the masks)
random     fixed K-hot drawn at init   same
real       the real-valued masks       same (no gradient once frozen)
full       none (one stream)           none
=========  ==========================  ==================================

Every function here is pure; :func:`step_masks` runs inside ``jit``.

**Frozen is state in the Flax modules.** The training program knows on the host
whether its masks are frozen and compiles one step per case. A Flax model carries its
frozen flag and the connectivity it froze as variables (:class:`mcjax.nnx.Frozen` and
:class:`mcjax.nnx.Connectivity`; Linen's collection ``"connectivity"``), so that they
travel with ``nnx.split``, orbax and Linen's variables; under ``jit`` the flag is a
traced value. :func:`layer_masks` is the table above for such a flag: the forward of a
frozen layer reads the recorded connectivity, whatever an optimizer has since done to
the real-valued masks, and the masks get a zero gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcjax import masks, models

__all__ = [
    "FIXED_RANDOM",
    "FROZEN_TOP_K",
    "NONE",
    "REAL",
    "SAMPLED",
    "TOP_K",
    "MasksOutsideUnitInterval",
    "concrete_bool",
    "freeze",
    "initial_fixed_masks",
    "layer_masks",
    "learns_masks",
    "must_freeze",
    "source",
    "step_masks",
    "warn_if_outside_unit_interval",
]

# What a step feeds the network (the answer of :func:`source`).
SAMPLED = "sampled K-hot"
TOP_K = "top-K of the masks"
FROZEN_TOP_K = "frozen top-K"
FIXED_RANDOM = "fixed random K-hot"
REAL = "real-valued masks"
NONE = "none"


def source(mode: str, *, frozen: bool, train: bool) -> str:
    """The kind of masks a step of ``mode`` uses (the table of the module docstring).

    Args:
      mode: ``Network.connectivity``.
      frozen: whether the state's masks are frozen (``TrainState.masks_frozen``).
      train: a training step (True) or evaluation/export (False).
    """
    if mode == "full":
        return NONE
    if mode == "real":
        return REAL
    if mode == "random":
        return FIXED_RANDOM
    if mode == "learned":
        if frozen:
            return FROZEN_TOP_K
        return SAMPLED if train else TOP_K
    raise ValueError(f"connectivity mode must be one of {models.CONNECTIVITIES}, got {mode!r}")


def learns_masks(net: models.Network, *, frozen: bool) -> bool:
    """Whether a training step gives the real-valued masks a gradient."""
    return net.has_masks and not frozen


def must_freeze(net: models.Network, *, phase: int, frozen: bool) -> bool:
    """True when the step about to run is in phase 2 or later and the masks still learn."""
    return net.has_masks and phase >= 2 and not frozen


def initial_fixed_masks(net: models.Network, variables: dict) -> jax.Array | None:
    """The fixed masks of a fresh state: ``[L-1, C, C]`` float32 K-hot, or ``None``.

    ``random``: the draw made at init. ``learned``: the top-K of the initial masks,
    a placeholder of the right shape (a checkpoint keeps one structure for the whole
    run) that no step reads before :func:`freeze` replaces it. ``full``, ``real``: None.
    """
    if net.connectivity == "random":
        return variables["connectivity"]
    if net.connectivity == "learned":
        return masks.top_k(variables["params"]["masks"], net.fan_in)
    return None


def step_masks(
    net: models.Network,
    params: dict,
    fixed_masks: Any,
    *,
    frozen: bool,
    train: bool,
    key: jax.Array | None = None,
) -> Any:
    """The masks one forward pass uses, to pass as ``connectivity`` to :func:`mcjax.apply`.

    Args:
      net: the network (its mode is ``net.connectivity``).
      params: its parameters (``params["masks"]`` in ``learned``/``real`` modes).
      fixed_masks: the state's fixed masks (``None`` for ``full``/``real``).
      frozen: whether the masks are frozen (a Python bool: it selects the program).
      train: a training step (samples in phase 1 of ``learned``) or evaluation.
      key: the step's key, needed for :data:`SAMPLED`.

    Returns:
      ``None`` (``full``) or ``[L-1, C, C]`` masks: K-hot float32, or the real-valued ones.
    """
    kind = source(net.connectivity, frozen=frozen, train=train)
    if kind == NONE:
        return None
    if kind == REAL:
        return params["masks"]
    if kind == SAMPLED:
        if key is None:
            raise ValueError("sampling K-hot masks needs the step's key")
        return masks.sample(key, params["masks"], net.fan_in)
    if kind == TOP_K:
        return masks.top_k(params["masks"], net.fan_in)
    if fixed_masks is None:
        raise ValueError(f"{kind} connectivity needs the state's fixed masks")
    return fixed_masks


def freeze(net: models.Network, params: dict, fixed_masks: Any) -> Any:
    """The fixed masks once frozen: the top-K of each row for ``learned``, else unchanged."""
    if net.connectivity == "learned":
        return masks.top_k(params["masks"], net.fan_in)
    return fixed_masks


def concrete_bool(flag) -> bool | None:
    """``flag`` as a Python bool when its value is known (not traced), else ``None``.

    ``None`` (a Linen model called without its ``"connectivity"`` collection) is False.
    """
    if flag is None:
        return False
    if isinstance(flag, jax.core.Tracer):
        return None
    return bool(np.asarray(flag))


def layer_masks(
    mode: str,
    real: jax.Array | None,
    record: jax.Array | None,
    frozen,
    *,
    train: bool,
    fan_in: int | None,
    key: Callable[[], jax.Array] | None = None,
) -> tuple[jax.Array | None, jax.Array | None]:
    """``(real_for_gradient, forward_masks)`` of one forward of a Flax layer.

    Args:
      mode: ``learned``, ``real``, ``random`` or ``full``.
      real: the real-valued masks (``learned``, ``real``), any leading axes.
      record: the fixed masks: ``random``'s draw, or the connectivity recorded by the
        last freeze (``learned``: K-hot; ``real``: the real-valued masks then).
      frozen: whether the masks are frozen: a bool array (concrete or traced) or
        ``None`` (not frozen).
      train: sample (``learned``) or take the top-K (evaluation) while not frozen.
      fan_in: K.
      key: called for the key of a draw; only when one may be needed (a traced
        ``frozen`` in training draws, and the recorded masks are chosen by value).

    Returns:
      ``(None, None)`` for ``full``; ``(None, record)`` for ``random``; for ``learned``
      and ``real``, the masks to give :func:`mcjax.masks.aggregate` as ``real_masks``
      (those of the layer, with a zero gradient once frozen) and the forward masks
      (the record once frozen; else sampled, top-K, or the real-valued masks).
    """
    if mode == "full":
        return None, None
    if mode == "random":
        return None, record
    if mode not in ("learned", "real"):
        raise ValueError(f"connectivity mode must be one of {models.CONNECTIVITIES}, got {mode!r}")

    def unfrozen():
        if mode == "real":
            return real
        if not train:
            return masks.top_k(real, fan_in)
        if key is None:
            raise ValueError(
                "drawing masks needs an rng: pass rngs=nnx.Rngs(...) (stream 'masks') at "
                "construction or in the call (Linen: rngs={'masks': key}); learned "
                "connectivity draws none in evaluation mode"
            )
        return masks.sample(key(), real, fan_in)

    known = concrete_bool(frozen)
    if known is True:
        return jax.lax.stop_gradient(real), record
    if known is False:
        return real, unfrozen()
    # Traced: both cases in one program, chosen by the flag's value.
    frozen = jnp.asarray(frozen, jnp.bool_)
    forward = jnp.where(frozen, record, unfrozen())
    return jnp.where(frozen, jax.lax.stop_gradient(real), real), forward


class MasksOutsideUnitInterval(UserWarning):
    """Real-valued masks left ``[0, 1]``: the optimizer is not :func:`mcjax.maskconnect`."""


_OUTSIDE_MESSAGE = (
    "mcjax: real-valued connectivity masks left [0, 1] during training (smallest {low:.3g}, "
    "largest {high:.3g}): the optimizer is not mcjax.maskconnect, which clips them after "
    "every step as MaskConnect does; sampling reads negative entries as 0 while "
    "evaluation takes the top-K of the raw values, so training and evaluation no longer "
    "use the same connectivity. Use mcjax.maskconnect(weights=<your optax optimizer>) "
    "(see docs/flax.md)."
)


def warn_if_outside_unit_interval(real, frozen=None) -> None:
    """Warns (:class:`MasksOutsideUnitInterval`, shown once per process by Python's
    default filter) when masks that still learn have left ``[0, 1]``.

    Only where the values are concrete: the Flax modules call it in eager forward
    passes, ``freeze``, ``frozen_connectivity`` and ``prune``. Under ``jit`` it does
    nothing: looking at the values from the host on every step costs time (a host
    callback in a ``lax.cond`` measured about 25% of a small model's train step), so a
    jitted loop calls :func:`mcjax.optim.check_masks` between steps instead.
    """
    if isinstance(real, jax.core.Tracer) or isinstance(frozen, jax.core.Tracer):
        return
    if frozen is not None and bool(np.all(np.asarray(frozen))):
        return
    values = np.asarray(real)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        warnings.warn(
            _OUTSIDE_MESSAGE.format(low=low, high=high), MasksOutsideUnitInterval, stacklevel=3
        )
