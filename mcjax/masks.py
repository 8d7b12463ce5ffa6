"""Branch masks: sampling K-hot connectivity and the straight-through aggregation.

This module implements the mask machinery of MaskConnect (Ahmed & Torresani,
"Connectivity learning in multi-branch networks", Sec. 2.2 and Algorithm 1).

A module ``i >= 2`` of a multi-branch network has ``C`` blocks; block ``j`` reads
the outputs ``y_k`` of the ``C`` blocks of module ``i - 1`` through a binary mask
row ``m[j] in {0, 1}^C`` with exactly ``K`` ones (the *fan-in*)::

    x_j = sum_k m[j, k] * y_k                                   (paper Eq. 2)

The binary rows are drawn from real-valued rows ``m~[j] in [0, 1]^C`` that are the
trainable parameters. Masks are arrays of shape ``[..., C_out, C_in]``: the last
axis indexes the *inputs* of a block (a row), the one before it the blocks. Any
leading axes (e.g. ``[modules, C, C]``) are batch axes, in :func:`sample`,
:func:`top_k` and :func:`aggregate` alike.

The contract shared by every function here:

* ``k`` is a static integer (a Python ``int``, ``np.int64`` or any integer with
  ``__index__``, never a ``bool``), ``1 <= k <= C_in``; it fixes the number of ones
  of each row, hence the shapes XLA compiles, so a traced ``k`` is refused with a
  ``TypeError`` that says how to make it static.
* Binary masks come back in the dtype of the real-valued masks they were made
  from; mixed branch outputs in the dtype of the branch outputs; gradients with
  respect to the masks in the dtype of the masks (accumulated in float32).
* :func:`sample`, :func:`top_k` and :func:`random_k_hot` have no gradient (their
  result is piecewise constant in the masks): the gradient reaches the real-valued
  masks only through :func:`aggregate`'s straight-through rule.

Every function here is pure; all randomness comes from an explicit key.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "aggregate",
    "inclusion_probabilities",
    "mean_entropy",
    "random_k_hot",
    "sample",
    "top_k",
]

# Zero entries get this logit instead of log(0). Every positive float32
# probability has a log above -104 and Gumbel noise lies within about [-5, 17],
# so a zero entry is drawn only after every positive entry of its row, and zero
# entries tie-break uniformly among themselves: rows with fewer than K positive
# entries (or none) still give K distinct valid indices and never NaN.
_ZERO_LOGIT = -1e4


def _check_k(k, num_inputs: int) -> int:
    """``k`` as a Python int, or a clear error (see the module docstring)."""
    if isinstance(k, jax.core.Tracer):
        raise TypeError(
            "k must be a static integer, got a traced value: k sets the number of ones "
            "per row and so the shapes XLA compiles. Pass it as a Python int, e.g. "
            "jax.jit(f, static_argnames='k'), or close over it instead of passing an array."
        )
    if isinstance(k, bool):
        raise TypeError("k must be an integer, got a bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__}: {k!r}") from None
    if not 1 <= k <= num_inputs:
        raise ValueError(f"k must satisfy 1 <= k <= C_in = {num_inputs}, got k={k}")
    return k


def _check_masks(real_masks: Array, name: str = "real_masks") -> None:
    if jnp.ndim(real_masks) < 2:
        raise ValueError(
            f"{name} must have shape [..., C_out, C_in] (at least 2 axes), "
            f"got shape {jnp.shape(real_masks)}"
        )


def _indices_to_k_hot(indices: Array, num_inputs: int, dtype) -> Array:
    # [..., K] distinct indices -> [..., C_in] with ones at those indices.
    return jax.nn.one_hot(indices, num_inputs, dtype=dtype).sum(axis=-2)


def _row_probs(real_masks: Array) -> Array:
    """Each row normalised to sum 1 (Alg. 1, step 1); negative entries count as 0."""
    weights = jnp.clip(real_masks.astype(jnp.float32), 0.0, None)
    totals = weights.sum(axis=-1, keepdims=True)
    return weights / jnp.where(totals > 0, totals, 1.0)


def _row_log_probs(real_masks: Array) -> Array:
    """Logits of the normalised rows, ``_ZERO_LOGIT`` for zero entries."""
    probs = _row_probs(real_masks)
    positive = probs > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, probs, 1.0)), _ZERO_LOGIT)


def sample(key: Array, real_masks: Array, k: int) -> Array:
    """Draws K-hot binary masks from real-valued masks (MaskConnect forward step).

    Each row of ``real_masks`` is normalised to sum 1 and ``k`` *distinct* indices
    are drawn from that categorical distribution without replacement (successive
    draws, each renormalised over the indices not yet taken), exactly as
    Algorithm 1 of the paper. This is implemented with the Gumbel-top-k trick:
    one vectorised draw for all rows, no Python loop over modules or blocks.

    Args:
      key: a PRNG key. The same key and masks give the same draw.
      real_masks: ``[..., C_out, C_in]`` real-valued masks, entries expected in
        ``[0, 1]`` (negative entries are treated as 0). Any float dtype; any
        leading axes (one independent draw per row).
      k: the fan-in, a static integer with ``1 <= k <= C_in``.

    Returns:
      An array of the shape and dtype of ``real_masks`` whose rows hold exactly
      ``k`` ones and ``C_in - k`` zeros. Rows with fewer than ``k`` positive
      entries (including all-zero rows) take every positive entry and fill the
      rest uniformly from the zero entries; all-zero rows are uniform. Never NaN.

    Not differentiable: the draw is piecewise constant in ``real_masks``, so its
    gradient is zero. Pass both to :func:`aggregate`, whose straight-through rule
    carries the gradient to ``real_masks``.
    """
    _check_masks(real_masks)
    num_inputs = real_masks.shape[-1]
    k = _check_k(k, num_inputs)
    log_probs = _row_log_probs(real_masks)
    gumbel = jax.random.gumbel(key, log_probs.shape, dtype=jnp.float32)
    _, indices = jax.lax.top_k(log_probs + gumbel, k)
    return _indices_to_k_hot(indices, num_inputs, real_masks.dtype)


def top_k(real_masks: Array, k: int) -> Array:
    """The ``k`` largest entries of each row as a K-hot mask (frozen connectivity).

    Used from phase 2 on, when each block's connectivity is fixed to its ``k``
    largest real-valued entries (paper Sec. 2.2). Ties go to the lower index.

    Args:
      real_masks: ``[..., C_out, C_in]`` real-valued masks, any leading axes.
      k: a static integer with ``1 <= k <= C_in``.

    Returns:
      An array of the shape and dtype of ``real_masks`` with exactly ``k`` ones
      per row. Not differentiable (zero gradient), like :func:`sample`.
    """
    _check_masks(real_masks)
    num_inputs = real_masks.shape[-1]
    k = _check_k(k, num_inputs)
    # lax.top_k orders equal values by index, lower first.
    _, indices = jax.lax.top_k(real_masks, k)
    return _indices_to_k_hot(indices, num_inputs, real_masks.dtype)


def random_k_hot(key: Array, shape: tuple[int, ...], k: int, *, dtype=jnp.float32) -> Array:
    """Uniformly random K-hot masks: the fixed connectivity of ``random`` mode.

    Each row independently takes ``k`` distinct indices, uniformly at random
    ("Fixed-Random" in the paper's Tables 1 and 4).

    Args:
      key: a PRNG key.
      shape: ``(..., C_out, C_in)``.
      k: a static integer with ``1 <= k <= C_in``.
      dtype: dtype of the result.

    Returns:
      An array of ``shape`` and ``dtype`` with exactly ``k`` ones per row.
    """
    return sample(key, jnp.ones(shape, dtype), k)


def aggregate(
    real_masks: Array, binary_masks: Array, branch_outputs: Array, *, scale: float = 1.0
) -> Array:
    """Mixes branch outputs through binary masks, with a straight-through gradient.

    Forward (paper Eq. 2): ``out[j] = scale * sum_k binary_masks[j, k] * branch_outputs[k]``.

    Backward (paper Sec. 2.2, as in BinaryConnect): with ``g = d loss / d out``,

    * ``real_masks`` receives ``scale * <g[j], branch_outputs[k]>`` (the gradient
      with respect to the *binary* entry, summed over every other axis), so that
      the real-valued masks are what the optimizer updates;
    * ``branch_outputs`` receives ``scale * sum_j binary_masks[j, k] * g[j]``;
    * ``binary_masks`` receives zero.

    Passing the real-valued masks as ``binary_masks`` as well (the paper's
    real-valued ablation) gives the exact gradient of ``scale * real_masks @ y``.

    Args:
      real_masks: ``[..., C_out, C_in]`` real-valued masks (only their gradient
        is used), any float dtype.
      binary_masks: ``[..., C_out, C_in]`` masks used in the forward pass (cast to
        the dtype of ``branch_outputs``).
      branch_outputs: ``[..., C_in, *features]``: the same leading axes as the
        masks, then the branch axis, then any feature axes; any float dtype.
      scale: a constant factor on the masks (``aggregation="mean"``: ``1 / K``), folded
        into the mix so that it costs no pass of its own over the C outputs; the
        gradients carry it too.

    Returns:
      ``[..., C_out, *features]`` in the dtype of ``branch_outputs`` (summed in
      float32). The gradient of ``real_masks`` has their dtype.
    """
    _check_aggregate_shapes(real_masks, binary_masks, branch_outputs)
    return _aggregate(float(scale), real_masks, binary_masks, branch_outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _aggregate(scale: float, real_masks: Array, binary_masks: Array, branch_outputs: Array):
    return _mix(binary_masks, branch_outputs, scale)


def _scaled(x: Array, scale: float) -> Array:
    return x if scale == 1.0 else x * jnp.asarray(scale, x.dtype)


def _check_aggregate_shapes(real_masks: Array, binary_masks: Array, branch_outputs: Array):
    _check_masks(binary_masks, "binary_masks")
    if real_masks.shape != binary_masks.shape:
        raise ValueError(
            f"real_masks {real_masks.shape} and binary_masks {binary_masks.shape} "
            "must have the same shape"
        )
    lead = binary_masks.ndim - 2
    if (
        branch_outputs.ndim <= lead
        or branch_outputs.shape[:lead] != binary_masks.shape[:lead]
        or branch_outputs.shape[lead] != binary_masks.shape[-1]
    ):
        raise ValueError(
            f"masks of shape {binary_masks.shape} ([..., C_out, C_in]) need branch_outputs "
            f"of shape [..., C_in={binary_masks.shape[-1]}, *features] with the same leading "
            f"axes {binary_masks.shape[:lead]}, got {branch_outputs.shape} (branches on axis "
            f"{lead})"
        )


def _flat_features(x: Array, lead: int) -> Array:
    # [..., C, *features] -> [..., C, F]
    return x.reshape((*x.shape[: lead + 1], -1))


def _accumulation(dtype) -> jnp.dtype:
    # float32, or the outputs' dtype when wider (float64 in tests).
    return jnp.promote_types(dtype, jnp.float32)


def _mix(binary_masks: Array, branch_outputs: Array, scale: float) -> Array:
    lead = binary_masks.ndim - 2
    flat = _flat_features(branch_outputs, lead)
    out = jnp.matmul(
        _scaled(binary_masks, scale).astype(branch_outputs.dtype),
        flat,
        preferred_element_type=_accumulation(branch_outputs.dtype),
    )
    return out.astype(branch_outputs.dtype).reshape(
        (*binary_masks.shape[:-1], *branch_outputs.shape[lead + 1 :])
    )


def _aggregate_fwd(scale, real_masks, binary_masks, branch_outputs):
    residuals = (real_masks, binary_masks, branch_outputs)
    return _mix(binary_masks, branch_outputs, scale), residuals


def _aggregate_bwd(scale, residuals, g):
    real_masks, binary_masks, branch_outputs = residuals
    lead = binary_masks.ndim - 2
    flat_g = _flat_features(g, lead)
    flat_y = _flat_features(branch_outputs, lead)
    # All C_out x C_in inner products <g_j, y_k> in one contraction (per leading index).
    accumulation = _accumulation(branch_outputs.dtype)
    d_real = _scaled(
        jnp.matmul(flat_g, jnp.swapaxes(flat_y, -1, -2), preferred_element_type=accumulation),
        scale,
    )
    d_outputs = jnp.matmul(
        jnp.swapaxes(_scaled(binary_masks, scale).astype(g.dtype), -1, -2),
        flat_g,
        preferred_element_type=accumulation,
    )
    return (
        d_real.astype(real_masks.dtype),
        jnp.zeros_like(binary_masks),
        d_outputs.astype(branch_outputs.dtype).reshape(branch_outputs.shape),
    )


_aggregate.defvjp(_aggregate_fwd, _aggregate_bwd)


def inclusion_probabilities(real_masks: Array, k: int) -> Array:
    """Exact probability that each entry is among the ``k`` drawn by :func:`sample`.

    Computed by enumerating all ordered draws, so it costs ``O(C!/(C-k)!)`` per
    row: meant for tests and small ``C`` (``C <= 8``). As in :func:`sample`, each
    draw is proportional to the row over the entries not yet taken, and uniform
    over them once no positive entry is left.

    Args:
      real_masks: ``[..., C_out, C_in]``.
      k: the fan-in.

    Returns:
      ``[..., C_out, C_in]`` float32 probabilities; each row sums to ``k``.
    """
    import itertools

    import numpy as np

    _check_masks(real_masks)
    num_inputs = real_masks.shape[-1]
    k = _check_k(k, num_inputs)
    probs = np.asarray(_row_probs(real_masks), np.float64)
    flat = probs.reshape(-1, num_inputs)
    result = np.zeros_like(flat)
    for row, p in enumerate(flat):
        for seq in itertools.permutations(range(num_inputs), k):
            prob, remaining = 1.0, set(range(num_inputs))
            for index in seq:
                mass = sum(p[i] for i in remaining)
                prob *= p[index] / mass if mass > 0 else 1.0 / len(remaining)
                remaining.discard(index)
            result[row, list(seq)] += prob
    return jnp.asarray(result.reshape(probs.shape), jnp.float32)


def mean_entropy(real_masks: Array) -> Array:
    """Mean entropy (nats) of the rows normalised to distributions.

    ``log(C_in)`` for uniform rows, 0 for one-hot rows: a summary of how decided
    the connectivity is, logged during training.
    """
    _check_masks(real_masks)
    probs = _row_probs(real_masks)
    safe = jnp.where(probs > 0, probs, 1.0)
    return -(probs * jnp.log(safe)).sum(axis=-1).mean()
