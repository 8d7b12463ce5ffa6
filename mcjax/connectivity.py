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
"""

from __future__ import annotations

from typing import Any

import jax

from mcjax import masks, models

__all__ = [
    "FIXED_RANDOM",
    "FROZEN_TOP_K",
    "NONE",
    "REAL",
    "SAMPLED",
    "TOP_K",
    "freeze",
    "initial_fixed_masks",
    "learns_masks",
    "must_freeze",
    "source",
    "step_masks",
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
