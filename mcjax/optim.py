"""The MaskConnect optimizer: weights and masks in one ``optax.multi_transform``.

Paper appendix E and docs/design.md §5:

* **weights** (every parameter but the masks): SGD with momentum 0.9 and weight
  decay, the decay added to the gradient before momentum (the ResNeXt reference;
  BN scale and bias are decayed too unless ``decay_norm_and_bias=False``);
* **masks** (``params["masks"]``): plain SGD with their own learning rate and no
  weight decay, the result clipped to ``[0, 1]`` after every update (as
  BinaryConnect clips its real-valued weights); or, from phase 2 on, frozen.

Example::

    tx = mcjax.optim.maskconnect(
        weight_learning_rate=mcjax.optim.piecewise_constant([3900, 7150], [0.1, 0.01, 0.001]),
        mask_learning_rate=0.2, weight_decay=5e-4)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)   # params are required
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "MASKS",
    "WEIGHTS",
    "clip_params",
    "mask_sgd",
    "maskconnect",
    "param_labels",
    "piecewise_constant",
    "weight_sgd",
]

WEIGHTS = "weights"
MASKS = "masks"


class ClipParamsState(NamedTuple):
    """Stateless."""


def clip_params(lower: float = 0.0, upper: float = 1.0) -> optax.GradientTransformation:
    """Turns updates into ones after which the parameters lie in ``[lower, upper]``.

    The update becomes ``clip(params + updates, lower, upper) - params``, so that
    ``optax.apply_updates`` lands on the clipped value. Put it last in a chain.
    For params in ``[lower, upper]`` the result stays inside the interval in
    float32 (the rounding of ``params + (c - params)`` cannot cross a bound).
    """
    if lower > upper:
        raise ValueError(f"need lower <= upper, got [{lower}, {upper}]")

    def init_fn(params):
        del params
        return ClipParamsState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_params needs params: call update(grads, state, params)")
        updates = jax.tree.map(
            lambda u, p: (jnp.clip(p + u, lower, upper) - p).astype(u.dtype), updates, params
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def mask_sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Plain SGD on the real-valued masks, then clipping to ``[0, 1]`` (paper Alg. 1, step 3).

    ``m <- clip(m - learning_rate * dL/dm, 0, 1)``; no momentum, no weight decay.
    A schedule that reaches 0 leaves the masks exactly unchanged.
    """
    return optax.chain(optax.scale_by_learning_rate(learning_rate), clip_params(0.0, 1.0))


def _decay_mask(params):
    # True for the leaves that get weight decay: all but BN scale/bias and biases.
    def keep(path, _):
        return getattr(path[-1], "key", None) not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def weight_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = True,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay, PyTorch/Torch convention.

    ``v <- momentum * v + (g + weight_decay * w)``; ``w <- w - learning_rate * v``.
    With ``decay_norm_and_bias=False``, BN scales/biases and biases are not decayed.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=None if decay_norm_and_bias else _decay_mask),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )


def param_labels(params) -> dict:
    """``"masks"`` for the subtree ``params["masks"]``, ``"weights"`` for everything else."""
    return {
        key: jax.tree.map(lambda _, k=key: MASKS if k == "masks" else WEIGHTS, value)
        for key, value in params.items()
    }


def maskconnect(
    *,
    weight_learning_rate: optax.ScalarOrSchedule,
    mask_learning_rate: optax.ScalarOrSchedule = 0.2,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    decay_norm_and_bias: bool = True,
    freeze_masks: bool = False,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """The MaskConnect optimizer for a ``params`` dict that may hold ``"masks"``.

    Args:
      weight_learning_rate: rate (or schedule of the step) for the weights.
      mask_learning_rate: rate (or schedule) for the real-valued masks (paper: 0.2
        in phase 1). A schedule that is 0 from phase 2 on freezes them in place.
      weight_decay: L2 coefficient for the weights (CIFAR 5e-4, ImageNet 1e-4).
        Never applied to the masks.
      momentum: weight momentum (0.9 in the paper).
      decay_norm_and_bias: decay BN scales/biases and biases too (the reference).
      freeze_masks: leave the masks untouched (``optax.set_to_zero``).
      nesterov: Nesterov momentum for the weights.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    """
    masks_tx = optax.set_to_zero() if freeze_masks else mask_sgd(mask_learning_rate)
    weights_tx = weight_sgd(
        weight_learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        decay_norm_and_bias=decay_norm_and_bias,
        nesterov=nesterov,
    )
    return optax.multi_transform({WEIGHTS: weights_tx, MASKS: masks_tx}, param_labels)


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> optax.Schedule:
    """``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]`` (phases of the paper).

    ``len(values) == len(boundaries) + 1``; ``boundaries`` strictly increasing.
    Unlike ``optax.piecewise_constant_schedule`` the values are absolute, and may be 0.
    """
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"need one more value than boundaries, got {len(values)} and {len(boundaries)}"
        )
    if any(b1 >= b2 for b1, b2 in itertools.pairwise(boundaries)):
        raise ValueError(f"boundaries must increase strictly, got {boundaries}")
    b = jnp.asarray(boundaries, jnp.int32)
    v = jnp.asarray(values, jnp.float32)

    def schedule(step):
        return v[jnp.searchsorted(b, jnp.asarray(step, jnp.int32), side="right")]

    return schedule
