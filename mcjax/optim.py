"""The MaskConnect optimizer: weights and masks in one ``optax.multi_transform``.

Paper appendix E and docs/design.md §5:

* **weights** (every parameter but the masks): SGD with momentum 0.9 and weight
  decay, the decay added to the gradient before momentum (the ResNeXt reference;
  BN scale and bias are decayed too unless ``decay_norm_and_bias=False``);
* **masks**: plain SGD with their own learning rate and no weight decay, the
  result clipped to ``[0, 1]`` after every update (as BinaryConnect clips its
  real-valued weights); or, from phase 2 on, frozen.

Which leaves are masks (:func:`is_mask`): every leaf under a key named ``masks``
at any depth (``params["masks"]``, ``params["encoder"]["block"]["masks"]``, the
way Flax nests a submodule's parameters), and every :class:`mcjax.nnx.Mask`
variable. Plain dicts, ``FrozenDict``s and ``nnx.State`` all work, so the result
is the ``tx`` of ``nnx.Optimizer`` and of ``flax.training.train_state.TrainState``.
Other names: pass ``mask_selector``.

Example::

    tx = mcjax.optim.maskconnect(
        weight_learning_rate=optax.join_schedules(
            [optax.constant_schedule(v) for v in (0.1, 0.01, 0.001)], [3900, 7150]),
        mask_learning_rate=0.2, weight_decay=5e-4)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)   # params are required
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = [
    "MASKS",
    "WEIGHTS",
    "MaskSelector",
    "clip_params",
    "is_mask",
    "mask_sgd",
    "maskconnect",
    "param_labels",
    "weight_sgd",
]

WEIGHTS = "weights"
MASKS = "masks"


MaskSelector = Callable[[tuple, Any], bool]
"""``selector(path, leaf) -> bool``: True for a mask. ``path`` is the key path of
``jax.tree_util.tree_map_with_path`` (``DictKey``, ``SequenceKey``, ``GetAttrKey``
entries); ``leaf`` an array, or an ``nnx.Variable`` when the tree holds them."""


def _key_name(entry) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _is_variable(leaf) -> bool:
    return isinstance(leaf, nnx.Variable)


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
        return _key_name(path[-1]) not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(keep, params, is_leaf=_is_variable)


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


def is_mask(path: tuple, leaf: Any) -> bool:
    """The default :data:`MaskSelector`: under a key named ``masks``, or an NNX ``Mask``.

    ``nnx.Optimizer`` hands ``tx.init`` a state of variables (types visible) but
    ``tx.update`` plain arrays (types gone), so a ``Mask`` variable must also be
    under a key named ``masks`` for both calls to agree; :func:`param_labels`
    refuses one that is not rather than mislabel it silently.
    """
    if any(_key_name(entry) == MASKS for entry in path):
        return True
    if not _is_variable(leaf):
        return False
    from mcjax.nnx import Mask  # mcjax.nnx imports this module: import it late

    return isinstance(leaf, Mask)


def param_labels(params, *, mask_selector: MaskSelector | None = None):
    """``"masks"`` or ``"weights"`` for every leaf of ``params``, in a tree of its structure.

    Works on dicts, ``FrozenDict``s, lists and ``nnx.State`` (whose ``nnx.Variable``
    leaves are labelled as a whole). With ``mask_selector=None`` the masks are
    :func:`is_mask`'s; a ``Mask`` variable outside a key named ``masks`` is then an
    error (``nnx.Optimizer`` would lose its type in ``update``).
    """
    selector = is_mask if mask_selector is None else mask_selector

    def label(path, leaf):
        selected = bool(selector(path, leaf))
        named = any(_key_name(entry) == MASKS for entry in path)
        if mask_selector is None and selected and not named:
            where = "/".join(str(_key_name(e)) for e in path)
            raise ValueError(
                f"the Mask variable at {where!r} is not under a key named 'masks': "
                "nnx.Optimizer passes plain arrays to tx.update, where its type is "
                "gone, so it would be trained as a weight. Name the attribute 'masks' "
                "or pass mask_selector= to maskconnect."
            )
        return MASKS if selected else WEIGHTS

    return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_variable)


def maskconnect(
    *,
    weight_learning_rate: optax.ScalarOrSchedule,
    mask_learning_rate: optax.ScalarOrSchedule = 0.2,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    decay_norm_and_bias: bool = True,
    freeze_masks: bool = False,
    nesterov: bool = False,
    mask_selector: MaskSelector | None = None,
) -> optax.GradientTransformation:
    """The MaskConnect optimizer for a parameter tree that may hold masks anywhere.

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
      mask_selector: ``selector(path, leaf) -> bool`` that picks the masks; default
        :func:`is_mask` (any leaf under a key named ``masks``, or an NNX ``Mask``).

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

    def labels(params):
        return param_labels(params, mask_selector=mask_selector)

    return optax.multi_transform({WEIGHTS: weights_tx, MASKS: masks_tx}, labels)
