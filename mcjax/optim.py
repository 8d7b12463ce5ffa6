"""The MaskConnect optimizer: any optax optimizer for the weights, clipped SGD for the masks.

Paper appendix E and docs/design.md §5:

* **weights** (every parameter but the masks): by default SGD with momentum 0.9 and
  weight decay, the decay added to the gradient before momentum (the ResNeXt
  reference; BN scale and bias are decayed too unless ``decay_norm_and_bias=False``);
  or any optax transform passed as ``weights=`` (e.g. ``optax.adamw(1e-3)``);
* **masks**: plain SGD with their own learning rate and no weight decay, the
  result clipped to ``[0, 1]`` after every update (as BinaryConnect clips its
  real-valued weights), whatever the weights get; or, with ``freeze_masks``, nothing.

**Which leaves are masks** (:func:`is_mask`), one rule per kind of leaf:

* an ``nnx.Variable`` is a mask when it is an :class:`mcjax.nnx.Mask`, whatever its
  name (an ``nnx.Linear`` stored as ``self.masks`` is a weight). ``nnx.Optimizer``
  hands ``tx.init`` the variables but ``tx.update`` plain arrays, so ``init`` records
  the labels it found in the optimizer state (no arrays: the record is static) and
  ``update`` reuses them: the type decides in both calls, for a ``mask_selector`` too;
* a plain array (functional and Linen trees, ``FrozenDict``s, pure ``nnx.State``) is a
  mask when its own key is ``masks`` (``params["masks"]``,
  ``params["block"]["mix"]["masks"]``). A key ``masks`` that holds a subtree (a layer
  named ``masks``, e.g. Linen's ``nn.Dense(name="masks")``) is refused with its path,
  rather than clipping that layer's weights; pass ``mask_selector=`` to decide otherwise.

Example::

    tx = mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2,
                           weight_decay=5e-4)                  # the paper's SGD
    tx = mcjax.maskconnect(weights=optax.adamw(1e-3))          # any optax optimizer
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)   # params are required
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mcjax.nnx import Mask

__all__ = [
    "MASKS",
    "WEIGHTS",
    "LabelledState",
    "MaskSelector",
    "check_masks",
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


def _path_string(path) -> str:
    return "/".join(str(_key_name(entry)) for entry in path)


def is_mask(path: tuple, leaf: Any) -> bool:
    """The default :data:`MaskSelector` (the module docstring's rule).

    An ``nnx.Variable`` leaf: an :class:`mcjax.nnx.Mask`. A plain leaf: its own key
    (the last entry of ``path``) is ``masks``. :func:`param_labels` refuses the
    ambiguous case, a plain leaf *inside* a subtree named ``masks``.
    """
    if _is_variable(leaf):
        return isinstance(leaf, Mask)
    return bool(path) and _key_name(path[-1]) == MASKS


def _ambiguous(path, leaf) -> bool:
    # A plain leaf below a key "masks" that is not its own: a layer named "masks".
    return not _is_variable(leaf) and any(_key_name(entry) == MASKS for entry in path[:-1])


def param_labels(params, *, mask_selector: MaskSelector | None = None):
    """``"masks"`` or ``"weights"`` for every leaf of ``params``, in a tree of its structure.

    Works on dicts, ``FrozenDict``s, lists and ``nnx.State`` (whose ``nnx.Variable``
    leaves are labelled as a whole). With ``mask_selector=None`` the masks are
    :func:`is_mask`'s, and a plain leaf inside a subtree named ``masks`` is refused
    with a ``ValueError`` naming its path.
    """
    selector = is_mask if mask_selector is None else mask_selector

    def label(path, leaf):
        if mask_selector is None and _ambiguous(path, leaf):
            raise ValueError(
                f"the parameter {_path_string(path)!r} is inside a subtree named 'masks' "
                "(a layer named 'masks'?), where the rule by name cannot tell whether it is "
                "connectivity: rename the layer, or pass mask_selector= to maskconnect"
            )
        return MASKS if selector(path, leaf) else WEIGHTS

    return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_variable)


@jax.tree_util.register_pytree_node_class
class _LabelRecord:
    """The labels ``tx.init`` found, by path: static data of the optimizer state.

    A pytree node with no children (nothing to checkpoint or donate), so that it
    travels unchanged through ``jit``, ``nnx.Optimizer`` and orbax.
    """

    def __init__(self, entries: tuple[tuple[str, str], ...]):
        self.entries = entries

    def tree_flatten(self):
        return (), self.entries

    @classmethod
    def tree_unflatten(cls, entries, children):
        del children
        return cls(entries)

    def __eq__(self, other):
        return isinstance(other, _LabelRecord) and other.entries == self.entries

    def __hash__(self):
        return hash(self.entries)

    def __repr__(self):
        masks = [path for path, label in self.entries if label == MASKS]
        return f"_LabelRecord(masks={masks})"

    @classmethod
    def of(cls, tree, labels) -> _LabelRecord:
        paths = [_path_string(p) for p, _ in _leaves_with_paths(tree)]
        return cls(tuple(zip(paths, jax.tree.leaves(labels), strict=True)))

    def labels_for(self, tree):
        """The recorded labels in the structure of ``tree`` (same leaves, by path)."""
        leaves = _leaves_with_paths(tree)
        paths = [_path_string(p) for p, _ in leaves]
        recorded = [path for path, _ in self.entries]
        if paths != recorded:
            diff = next(
                (a, b) for a, b in zip([*paths, None], [*recorded, None], strict=False) if a != b
            )
            raise ValueError(
                "tx.update got a tree whose parameters differ from those tx.init saw "
                f"(first difference: {diff[0]!r} against {diff[1]!r}); init the optimizer "
                "on the parameters it updates"
            )
        treedef = jax.tree.structure(tree, is_leaf=_is_variable)
        return jax.tree.unflatten(treedef, [label for _, label in self.entries])


def _leaves_with_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]


def _has_variables(tree) -> bool:
    return any(_is_variable(leaf) for leaf in jax.tree.leaves(tree, is_leaf=_is_variable))


class LabelledState(NamedTuple):
    """The state of :func:`maskconnect` initialised on a tree of ``nnx.Variable`` leaves.

    ``labels``: which leaves are masks, as found by type in ``init`` (static, no
    arrays); ``inner``: the ``optax.multi_transform`` state. Trees of plain arrays
    get the ``multi_transform`` state itself (their rule reads the same tree in
    ``update``).
    """

    labels: _LabelRecord
    inner: Any


def _partition(transforms: dict, mask_selector: MaskSelector | None):
    """``optax.multi_transform`` with labels decided once, in ``init``, by the leaves' types."""

    def labels_of(tree):
        return param_labels(tree, mask_selector=mask_selector)

    def init_fn(params):
        labels = labels_of(params)
        inner = optax.multi_transform(transforms, labels).init(params)
        if not _has_variables(params):
            return inner
        return LabelledState(_LabelRecord.of(params, labels), inner)

    def update_fn(updates, state, params=None):
        if isinstance(state, LabelledState):
            labels = state.labels.labels_for(updates)
            new_updates, inner = optax.multi_transform(transforms, labels).update(
                updates, state.inner, params
            )
            return new_updates, LabelledState(state.labels, inner)
        return optax.multi_transform(transforms, labels_of(updates)).update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def maskconnect(
    weight_learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    weights: optax.GradientTransformation | None = None,
    mask_learning_rate: optax.ScalarOrSchedule = 0.2,
    weight_decay: float | None = None,
    momentum: float | None = None,
    decay_norm_and_bias: bool | None = None,
    nesterov: bool | None = None,
    freeze_masks: bool = False,
    mask_selector: MaskSelector | None = None,
) -> optax.GradientTransformation:
    """The MaskConnect optimizer for a parameter tree that may hold masks anywhere.

    Args:
      weight_learning_rate: rate (or schedule of the step) of the paper's SGD for
        the weights; required unless ``weights`` is given.
      weights: any optax transform for the weights instead (e.g.
        ``optax.adamw(1e-3)``, a chain with clipping, a schedule inside): it sees the
        weights only, never the masks. Exclusive with the SGD arguments.
      mask_learning_rate: rate (or schedule) for the real-valued masks (paper: 0.2
        in phase 1). A schedule that is 0 from phase 2 on freezes them in place.
      weight_decay: L2 coefficient of the SGD (default 5e-4; CIFAR 5e-4, ImageNet
        1e-4). Never applied to the masks.
      momentum: SGD momentum (default 0.9, the paper).
      decay_norm_and_bias: decay BN scales/biases and biases too (default True, the
        reference).
      nesterov: Nesterov momentum for the SGD (default False).
      freeze_masks: leave the masks untouched (``optax.set_to_zero``).
      mask_selector: ``selector(path, leaf) -> bool`` that picks the masks, called by
        ``init`` (on the ``nnx.Variable`` leaves when given them; the labels are recorded for
        ``update``); default :func:`is_mask`.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``. The masks
      always get plain SGD clipped to ``[0, 1]`` (or nothing); a frozen Flax layer
      gives its masks a zero gradient, so they do not move under it.
    """
    sgd_options = {
        "weight_learning_rate": weight_learning_rate,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "decay_norm_and_bias": decay_norm_and_bias,
        "nesterov": nesterov,
    }
    if weights is not None:
        given = [name for name, value in sgd_options.items() if value is not None]
        if given:
            raise ValueError(
                f"maskconnect got weights= and {', '.join(given)}: the transform given as "
                "weights= is the whole optimizer of the weights, so give it its own "
                "learning rate, decay and momentum"
            )
        weights_tx = weights
    else:
        if weight_learning_rate is None:
            raise TypeError(
                "maskconnect needs weight_learning_rate= (the paper's SGD for the weights) "
                "or weights= (any optax transform for them)"
            )
        weights_tx = weight_sgd(
            weight_learning_rate,
            momentum=0.9 if momentum is None else momentum,
            weight_decay=5e-4 if weight_decay is None else weight_decay,
            decay_norm_and_bias=True if decay_norm_and_bias is None else decay_norm_and_bias,
            nesterov=bool(nesterov),
        )
    masks_tx = optax.set_to_zero() if freeze_masks else mask_sgd(mask_learning_rate)
    return _partition({WEIGHTS: weights_tx, MASKS: masks_tx}, mask_selector)


def check_masks(tree, *, mask_selector: MaskSelector | None = None) -> None:
    """Raises a ``ValueError`` naming the first mask of ``tree`` outside ``[0, 1]``.

    ``tree``: an NNX module, an ``nnx.State``, or a parameter tree (masks found as
    :func:`maskconnect` finds them). Values must be concrete: call it between jitted
    steps. MaskConnect's masks live in ``[0, 1]``, which only :func:`maskconnect`'s
    clipped SGD keeps; masks outside mean another optimizer trained them (the Flax
    modules also warn, once, where they see concrete values:
    :class:`mcjax.connectivity.MasksOutsideUnitInterval`).
    """
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    labels = param_labels(tree, mask_selector=mask_selector)
    for (path, leaf), label in zip(_leaves_with_paths(tree), jax.tree.leaves(labels), strict=True):
        if label != MASKS:
            continue
        values = np.asarray(leaf[...] if _is_variable(leaf) else leaf)
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"the masks at {_path_string(path)!r} lie in [{low:.4g}, {high:.4g}], outside "
                "[0, 1]: they were not trained by mcjax.maskconnect, whose clipped SGD keeps "
                "them there (use mcjax.maskconnect(weights=<your optimizer>))"
            )
