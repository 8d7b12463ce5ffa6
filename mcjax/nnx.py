"""MaskConnect in Flax NNX: a masked aggregation layer, a multi-branch container, ``Network``.

Thin layers over the functional core (:mod:`mcjax.masks`, :mod:`mcjax.models`); they
hold the variables and pick the masks of a forward pass
(:func:`mcjax.connectivity.layer_masks`). The guide is docs/flax.md.

* Variable types: :class:`Mask` (the real-valued masks, an ``nnx.Param`` that
  :func:`mcjax.maskconnect` finds by type), :class:`Connectivity` (fixed binary masks:
  ``random``'s draw, or the record of ``freeze()``) and :class:`Frozen` (the flag).
  Frozen layers read the record in every forward pass and give their masks a zero
  gradient, whatever the optimizer; record and flag travel with
  ``nnx.split``/``nnx.merge`` and orbax; ``unfreeze()`` is the way back.
* :class:`MaskedAggregation`: ``[C_in, ...] -> [C_out, ...]`` through K-hot masks drawn
  from the rng stream ``"masks"`` in training, their top-K in eval mode, the record once
  frozen; the straight-through gradient of :func:`mcjax.masks.aggregate`.
* :class:`MultiBranch`: ``C`` copies of *any* NNX block reading learned K-of-``C_in``
  selections of the previous branches; :func:`prune` removes the dead blocks of a model
  built of them.
* :class:`Network`: the networks of :mod:`mcjax.architectures`, a
  :class:`mcjax.models.Network` holding its variables and computing exactly
  :func:`mcjax.apply`.

Modes, as in :mod:`mcjax.models`: ``learned``, ``real``, ``random``, ``full``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcjax import checks, models
from mcjax import connectivity as connectivity_policy
from mcjax import masks as masks_lib
from mcjax import prune as prune_lib
from mcjax.architectures import Architecture

Array = jax.Array

__all__ = [
    "Connectivity",
    "Frozen",
    "Mask",
    "MaskedAggregation",
    "MultiBranch",
    "Network",
    "prune",
]

# --- Variable types and the helpers the modules share --------------------------------

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


def _rng_stream(rngs: nnx.Rngs | nnx.RngStream | None):
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


def _key_source(stored, rngs) -> Callable[[], Array] | None:
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


def _set_flag(variable: nnx.Variable, value: bool) -> None:
    variable[...] = jnp.full(jnp.shape(variable[...]), value, jnp.bool_)


def _is_frozen(flag: nnx.Variable | None) -> bool:
    value = connectivity_policy.concrete_bool(None if flag is None else jnp.all(flag[...]))
    if value is None:
        raise ValueError("is_frozen needs concrete variables: ask outside jit")
    return value


# --- Layers ------------------------------------------------------------------------


class MaskedAggregation(nnx.Module):
    """``out[j] = sum_k m[j, k] * x[k]`` through K-hot masks learned by MaskConnect.

    Args:
      num_outputs: ``C_out``, the blocks fed.
      num_inputs: ``C_in``, the branches read.
      fan_in: ``K``, inputs per output (``1 <= K <= C_in``); required but for
        ``full``, which reads every input.
      connectivity: ``"learned"`` | ``"real"`` | ``"random"`` | ``"full"``.
      aggregation: ``"mean"`` (divided by K; ``full``: by ``C_in``) or ``"sum"``.
      mask_init: initial value of the real-valued masks, in ``[0, 1]``.
      rngs: the stream ``"masks"`` (or the default one) draws training masks and
        ``random``'s fixed ones. An ``nnx.Rngs`` without either is fine for a model
        only evaluated, or given ``rngs`` in each training call.

    Variables: ``masks`` (:class:`Mask` ``[C_out, C_in]``: ``learned``, ``real``),
    ``connectivity`` (:class:`Connectivity` ``[C_out, C_in]``: ``random``'s draw, or
    the record of ``freeze()``), ``frozen`` (:class:`Frozen`: ``learned``, ``real``).
    """

    def __init__(
        self,
        num_outputs: int,
        num_inputs: int,
        *,
        fan_in: int | None = None,
        connectivity: str = "learned",
        aggregation: str = "mean",
        mask_init: float = 0.5,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        checks.check_layer_options(connectivity, aggregation, mask_init)
        self.num_outputs = checks.positive_int(num_outputs, "num_outputs")
        self.num_inputs = checks.positive_int(num_inputs, "num_inputs")
        self.fan_in = checks.layer_fan_in(fan_in, self.num_inputs, connectivity)
        self.mode = connectivity
        self.aggregation = aggregation
        self.deterministic = False  # nnx's train()/eval() switch: top-K when True
        shape = (self.num_outputs, self.num_inputs)
        self.rngs = _rng_stream(rngs)
        if connectivity in ("learned", "real"):
            real = jnp.full(shape, mask_init, jnp.float32)
            self.masks = Mask(real)
            placeholder = masks_lib.top_k(real, self.fan_in) if connectivity == "learned" else real
            self.connectivity = Connectivity(placeholder)
            self.frozen = Frozen(jnp.asarray(False))
        if connectivity == "random":
            if self.rngs is None:
                raise ValueError(
                    "random connectivity draws its fixed masks when built: pass rngs with a "
                    "'masks' (or default) stream, e.g. nnx.Rngs(0)"
                )
            self.connectivity = Connectivity(
                masks_lib.random_k_hot(self.rngs(), shape, self.fan_in)
            )

    @property
    def is_frozen(self) -> bool:
        """Whether the connectivity is fixed (always for ``random`` and ``full``)."""
        if self.mode in ("random", "full"):
            return True
        return _is_frozen(self.frozen)

    def freeze(self, connectivity: Array | None = None) -> None:
        """Records the connectivity every later forward pass uses, in training too.

        ``learned``: the top-K of the masks (ties go to the lower index), or the given
        K-hot ``connectivity`` (checked: shape, binary, K ones per row). ``real``: the
        real-valued masks as they are, or the given ones. ``random`` and ``full`` are
        fixed already (nothing to do). The masks then get a zero gradient; the record
        and the flag are variables (:class:`Connectivity`, :class:`Frozen`).
        """
        if self.mode in ("random", "full"):
            if connectivity is not None:
                raise ValueError(f"{self.mode!r} connectivity is fixed: nothing to freeze to")
            return
        real = self.masks[...]
        connectivity_policy.warn_if_outside_unit_interval(real)
        if connectivity is None:
            record = masks_lib.top_k(real, self.fan_in) if self.mode == "learned" else real
        else:
            record = jnp.asarray(connectivity, jnp.float32)
            if record.shape != real.shape:
                raise ValueError(
                    f"freeze got connectivity of shape {record.shape}; this layer's masks "
                    f"are {real.shape}"
                )
            checks.check_k_hot(
                record,
                self.fan_in if self.mode == "learned" else None,
                name="the connectivity given to freeze",
                binary=self.mode == "learned",
            )
        self.connectivity[...] = record
        _set_flag(self.frozen, True)

    def unfreeze(self) -> None:
        """Back to learning: sampled masks in training, top-K in evaluation."""
        if self.mode in ("learned", "real"):
            _set_flag(self.frozen, False)

    def _masks(self, *, train: bool, rngs=None) -> tuple[Array, Array]:
        shape = (self.num_outputs, self.num_inputs)
        if self.mode == "full":
            ones = jnp.ones(shape, jnp.float32)
            return ones, ones
        if self.mode == "random":
            fixed = self.connectivity[...]
            return fixed, fixed
        frozen = self.frozen[...]
        if self.mode == "learned" and connectivity_policy.concrete_bool(frozen) is not False:
            checks.check_k_hot(self.connectivity[...], self.fan_in, name="the frozen record")
        real, forward = connectivity_policy.layer_masks(
            self.mode,
            self.masks[...],
            self.connectivity[...],
            frozen,
            train=train,
            fan_in=self.fan_in,
            key=_key_source(self.rngs, rngs),
        )
        # Eager calls only (concrete values); a jitted loop uses mcjax.optim.check_masks.
        connectivity_policy.warn_if_outside_unit_interval(self.masks[...], frozen)
        return real, forward

    def binary_masks(self, *, rngs=None) -> Array:
        """The ``[C_out, C_in]`` masks of the next forward pass (in the current mode)."""
        return self._masks(train=not self.deterministic, rngs=rngs)[1]

    def frozen_connectivity(self) -> Array:
        """The masks of evaluation: the record once frozen, else the top-K of the masks
        (``real``: the masks), ``random``'s draw, or all ones (``full``)."""
        return self._masks(train=False)[1]

    def __call__(self, branch_outputs: Array, *, rngs=None) -> Array:
        """``branch_outputs [C_in, *features]`` -> ``[C_out, *features]`` (its dtype)."""
        if jnp.ndim(branch_outputs) < 1 or branch_outputs.shape[0] != self.num_inputs:
            raise ValueError(
                f"MaskedAggregation reads [C_in={self.num_inputs}, *features] branch outputs, "
                f"got shape {jnp.shape(branch_outputs)}"
            )
        real, forward = self._masks(train=not self.deterministic, rngs=rngs)
        scale = 1.0
        if self.aggregation == "mean":
            scale = 1.0 / (self.num_inputs if self.mode == "full" else self.fan_in)
        return masks_lib.aggregate(real, forward.astype(real.dtype), branch_outputs, scale=scale)


# MultiBranch calls seen by prune()'s recording pass, in call order.
_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "mcjax_nnx_multibranch_calls", default=None
)


class MultiBranch(nnx.Module):
    """``C`` copies of any block, each reading a learned K-of-``C_in`` mix of its inputs.

    ``y[j] = block_j(x'[j])`` with ``x' = MaskedAggregation(x)`` (per-branch inputs
    ``x [C_in, N, *features]``), or ``x' = x`` for every block when ``num_inputs`` is
    ``None`` (one shared input ``[N, ...]``, e.g. the first of a stack). Stack
    several to learn the connectivity of a whole multi-branch network.

    The per-branch input's leading axis is always read as the ``C_in`` branches and
    must be followed by a batch axis and at least one feature axis (3 axes or more),
    so that a plain batch ``[N, F]`` is refused rather than mixed across examples. A
    batch with more axes whose size happens to be ``C_in`` cannot be told apart from
    branches: feed a mixing ``MultiBranch`` the output of another (or ``jnp.stack``).

    Args:
      make_block: ``make_block(rngs) -> nnx.Module``, called ``num_branches`` times.
      num_branches: ``C``.
      num_inputs: ``C_in`` of the per-branch input, or ``None`` for a shared input
        (then there is no mix, and giving ``fan_in`` is an error).
      fan_in, connectivity, aggregation, mask_init: of the :class:`MaskedAggregation`
        ``mix`` (``fan_in`` required but for ``full``).
      rngs: for the blocks' parameters and the ``"masks"`` stream.
    """

    def __init__(
        self,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        num_branches: int,
        *,
        num_inputs: int | None,
        fan_in: int | None = None,
        connectivity: str = "learned",
        aggregation: str = "mean",
        mask_init: float = 0.5,
        rngs: nnx.Rngs,
    ):
        num_branches = checks.positive_int(num_branches, "num_branches")
        if num_inputs is None and fan_in is not None:
            raise ValueError(
                f"fan_in={fan_in!r} has no effect with num_inputs=None: a MultiBranch with one "
                "shared input has no mix to choose K inputs for; give num_inputs=C_in to mix "
                "per-branch inputs"
            )
        self.blocks = nnx.List([make_block(rngs) for _ in range(num_branches)])
        self.mix = (
            None
            if num_inputs is None
            else MaskedAggregation(
                num_branches,
                num_inputs,
                fan_in=fan_in,
                connectivity=connectivity,
                aggregation=aggregation,
                mask_init=mask_init,
                rngs=rngs,
            )
        )

    @property
    def num_branches(self) -> int:
        """``C``, the blocks (fewer after :func:`prune`)."""
        return len(self.blocks)

    @property
    def is_frozen(self) -> bool:
        """Whether the mix's connectivity is fixed (True without a mix)."""
        return self.mix is None or self.mix.is_frozen

    def freeze(self, connectivity: Array | None = None) -> None:
        """Fixes the mix's connectivity (:meth:`MaskedAggregation.freeze`)."""
        if self.mix is not None:
            self.mix.freeze(connectivity)
        elif connectivity is not None:
            raise ValueError("a MultiBranch with a shared input has no connectivity to freeze")

    def unfreeze(self) -> None:
        """Back to learning the mix's connectivity."""
        if self.mix is not None:
            self.mix.unfreeze()

    def __call__(self, x: Array, *, rngs=None, **block_kwargs) -> Array:
        """``x [C_in, N, *features]`` (or shared ``[N, ...]``) -> ``[C, N, ...]``."""
        recording = _RECORDING.get()
        if recording is not None:
            recording.append((self, jnp.shape(x)))
        if self.mix is None:
            inputs = [x] * len(self.blocks)
        else:
            if jnp.ndim(x) < 3 or x.shape[0] != self.mix.num_inputs:
                raise ValueError(
                    f"this MultiBranch mixes per-branch inputs [C_in={self.mix.num_inputs}, N, "
                    f"*features], got shape {jnp.shape(x)}; a plain batch [N, *features] is "
                    "one shared input (num_inputs=None)"
                )
            inputs = list(self.mix(x, rngs=rngs))
        return jnp.stack(
            [block(x_j, **block_kwargs) for block, x_j in zip(self.blocks, inputs, strict=True)]
        )


# --- Pruning a model of one's own -----------------------------------------------------


@contextlib.contextmanager
def _recording():
    calls: list = []
    token = _RECORDING.set(calls)
    try:
        yield calls
    finally:
        _RECORDING.reset(token)


def prune(model: nnx.Module, *args, **kwargs) -> nnx.Module:
    """A copy of ``model`` without the blocks of its :class:`MultiBranch` layers that
    nothing reads, in evaluation mode, computing the same outputs.

    ``args``/``kwargs`` are an example call of ``model`` (e.g. a batch): one
    evaluation pass records the order in which the ``MultiBranch`` layers run. The
    supported models are chains: a ``MultiBranch`` that mixes per-branch inputs reads
    the branches of the ``MultiBranch`` that ran just before it (directly or through
    per-branch functions), and the branches of any other (the last, or one followed
    by a shared-input ``MultiBranch``) are all read by what follows. Under each
    layer's evaluation connectivity (the record once frozen, else the top-K of the
    masks, which must be decided: no tie at the K-th place), a block is live when a
    live block reads it (:func:`mcjax.prune.chain_liveness`).

    The copy keeps only live blocks; each mix is sliced to the live rows and columns
    and frozen to that connectivity (so it trains on with it). Its output on the
    example call is compared with the model's (relative error at most
    :data:`mcjax.prune.PRUNED_OUTPUT_RTOL`), and a model that is not such a chain (a
    branch output read elsewhere) is refused rather than returned changed.
    ``nnx.vmap`` stacks of ``MultiBranch`` layers cannot be pruned (their layers
    would lose different blocks). The model itself is not modified.
    """
    pruned = nnx.clone(model)
    pruned.eval()
    with _recording() as calls:
        reference = pruned(*args, **kwargs)
    if not calls:
        raise ValueError("prune found no MultiBranch layer in the example call of the model")
    layers = [layer for layer, _ in calls]
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("prune needs each MultiBranch layer to run once per call")
    if any(
        layer.mix is not None
        and layer.mix.mode != "full"
        and jnp.ndim(layer.mix.connectivity[...]) != 2
        for layer in layers
    ):
        raise ValueError("prune does not support nnx.vmap stacks of MultiBranch layers")
    mixes, reads_previous = [], []
    for index, layer in enumerate(layers):
        mix = layer.mix
        if mix is None:
            mixes.append(None)
            reads_previous.append(False)
            continue
        if mix.mode == "learned" and not mix.is_frozen:
            prune_lib.check_top_k_decided(mix.masks[...], mix.fan_in, where=f"MultiBranch {index}")
        mixes.append(np.asarray(mix.frozen_connectivity()))
        reads_previous.append(index > 0 and layers[index - 1].num_branches == mix.num_inputs)
    live = prune_lib.chain_liveness([layer.num_branches for layer in layers], mixes, reads_previous)
    for index, (layer, keep) in enumerate(zip(layers, live, strict=True)):
        kept = np.flatnonzero(keep)
        layer.blocks = nnx.List([layer.blocks[int(k)] for k in kept])
        mix = layer.mix
        if mix is None:
            continue
        columns = live[index - 1] if reads_previous[index] else np.ones(mix.num_inputs, bool)
        used = jnp.asarray(mixes[index][keep][:, columns])
        mix.num_outputs, mix.num_inputs = int(keep.sum()), int(columns.sum())
        if mix.mode in ("learned", "real"):
            mix.masks = Mask(mix.masks[...][keep][:, columns])
            mix.connectivity = Connectivity(used)
            mix.frozen = Frozen(jnp.asarray(True))
        elif mix.mode == "random":
            mix.connectivity = Connectivity(used)
    prune_lib.check_pruned_output(pruned(*args, **kwargs), reference)
    return pruned


# --- The paper's networks ------------------------------------------------------------


def _wrap(tree, variable_type):
    return jax.tree.map(variable_type, tree)


def _unwrap(tree):
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Network(nnx.Module):
    """A network of :mod:`mcjax.architectures` as an NNX module: ``images -> logits``.

    ``Network(net, rngs=...)`` runs the :class:`mcjax.models.Network` ``net``;
    ``Network(arch, num_classes=..., ..., rngs=...)`` builds it from ``arch`` (an
    :class:`~mcjax.architectures.Architecture` or a name, e.g. ``"20,4,8"``) and the
    other fields of :class:`mcjax.models.Network` as keyword arguments, with its
    defaults (``fan_in`` the paper's 4) and its checks. Runs :func:`mcjax.apply`: the
    same logits, gradients and batch statistics as the functional network on the same
    weights and masks.

    Args:
      net: the :class:`mcjax.models.Network`, or its ``arch``.
      rngs: stream ``"params"`` for the weights, ``"masks"`` for the training masks.
      variables: functional variables (:func:`mcjax.init`'s layout) to hold instead of
        fresh ones.
      frozen_connectivity: start frozen to these ``[L-1, C, C]`` masks, e.g. a
        trainer's ``TrainState.fixed_masks``.
      **fields: the fields of :class:`mcjax.models.Network` but ``arch``, when ``net``
        is an architecture.

    Variables: ``weights`` (``nnx.Param``: ``stem``, ``modules``, ``head`` as in the
    functional ``params``), ``masks`` (:class:`Mask` ``[L-1, C, C]``: ``learned``,
    ``real``), ``batch_stats`` (``nnx.BatchStat``), ``connectivity``
    (:class:`Connectivity`: ``random``'s draw, or the record of ``freeze()``),
    ``frozen`` (:class:`Frozen`: ``learned``, ``real``). The description is ``net``.
    """

    def __init__(
        self,
        net: models.Network | Architecture | str,
        *,
        rngs: nnx.Rngs,
        variables: dict | None = None,
        frozen_connectivity: Array | None = None,
        **fields: Any,
    ):
        if isinstance(net, models.Network):
            if fields:
                raise TypeError(
                    f"Network(net) takes its fields from the models.Network given, not "
                    f"{sorted(fields)} too (dataclasses.replace(net, ...) changes them)"
                )
            self.net = net
        else:
            self.net = models.Network(net, **fields)
        if variables is None:
            variables = models.init(rngs.params(), self.net)
        params = dict(variables["params"])
        real_masks = params.pop("masks", None)
        self.weights = nnx.data(_wrap(params, nnx.Param))
        self.batch_stats = nnx.data(_wrap(dict(variables["batch_stats"]), nnx.BatchStat))
        mode = self.net.connectivity
        if self.net.has_masks:
            real = jnp.asarray(real_masks)
            self.masks = Mask(real)
            placeholder = masks_lib.top_k(real, self.net.fan_in) if mode == "learned" else real
            self.connectivity = Connectivity(placeholder)
            self.frozen = Frozen(jnp.asarray(False))
        if mode == "random":
            self.connectivity = Connectivity(jnp.asarray(variables["connectivity"]))
        self.rngs = _rng_stream(rngs)
        self.use_running_average = False  # nnx's train()/eval() switch
        if frozen_connectivity is not None:
            self.freeze(frozen_connectivity)

    @classmethod
    def from_variables(
        cls,
        net: models.Network,
        variables: dict,
        *,
        rngs=None,
        frozen_connectivity: Array | None = None,
    ) -> Network:
        """The NNX network holding the functional ``variables`` of ``net`` (as from
        :func:`mcjax.init`: ``params``, ``batch_stats``, ``connectivity``), frozen to
        ``frozen_connectivity`` when given; ``rngs`` defaults to ``nnx.Rngs(0)``."""
        return cls(
            net,
            rngs=rngs if rngs is not None else nnx.Rngs(0),
            variables=variables,
            frozen_connectivity=frozen_connectivity,
        )

    def to_variables(self) -> dict:
        """The functional ``{"params", "batch_stats", "connectivity"}`` of ``self.net``
        (:func:`mcjax.init`'s layout: ``connectivity`` is ``random``'s draw, else None;
        a frozen record is :meth:`frozen_connectivity`)."""
        params = _unwrap(self.weights)
        if self.net.has_masks:
            params["masks"] = self.masks[...]
        return {
            "params": params,
            "batch_stats": _unwrap(self.batch_stats),
            "connectivity": (self.connectivity[...] if self.net.connectivity == "random" else None),
        }

    @property
    def is_frozen(self) -> bool:
        """Whether the connectivity is fixed (always for ``random`` and ``full``)."""
        if not self.net.has_masks:
            return True
        return _is_frozen(self.frozen)

    def freeze(self, connectivity: Array | None = None) -> None:
        """Records the connectivity every later forward pass uses (phases 2-4).

        ``learned``: the top-K of the masks (ties to the lower index), or the given
        ``[L-1, C, C]`` K-hot masks (checked). ``real``: the masks as they are (or the
        given ones). ``random``/``full``: fixed already. The masks then get a zero
        gradient; the record and the flag are variables and travel with the state.
        """
        if not self.net.has_masks:
            if connectivity is not None:
                raise ValueError(f"{self.net.connectivity!r} connectivity is fixed already")
            return
        real = self.masks[...]
        connectivity_policy.warn_if_outside_unit_interval(real)
        if connectivity is None:
            record = connectivity_policy.freeze(self.net, {"masks": real}, real)
        else:
            record = jnp.asarray(connectivity, jnp.float32)
            checks.check_connectivity(
                record,
                self.net.arch.mask_shapes,
                k=self.net.fan_in if self.net.connectivity == "learned" else None,
                binary=self.net.connectivity == "learned",
                name="the connectivity given to freeze",
            )
        self.connectivity[...] = record
        _set_flag(self.frozen, True)

    def unfreeze(self) -> None:
        """Back to learning: sampled masks in training, top-K in evaluation."""
        if self.net.has_masks:
            _set_flag(self.frozen, False)

    def _masks(self, *, train: bool, rngs=None) -> tuple[Array | None, Array | None]:
        mode = self.net.connectivity
        if not self.net.has_masks:
            return None, (self.connectivity[...] if mode == "random" else None)
        frozen = self.frozen[...]
        if mode == "learned" and connectivity_policy.concrete_bool(frozen) is not False:
            checks.check_connectivity(
                self.connectivity[...],
                self.net.arch.mask_shapes,
                k=self.net.fan_in,
                name="the frozen record",
            )
        return connectivity_policy.layer_masks(
            mode,
            self.masks[...],
            self.connectivity[...],
            frozen,
            train=train,
            fan_in=self.net.fan_in,
            key=_key_source(self.rngs, rngs),
        )

    def frozen_connectivity(self) -> Array | None:
        """The masks of evaluation: the record once frozen, else the top-K of the masks
        (``learned``) or the masks (``real``); ``random``'s draw; ``None`` (``full``)."""
        return self._masks(train=False)[1]

    def __call__(self, images: Array, *, rngs=None) -> Array:
        """``images [N, H, W, in_channels]`` -> float32 logits ``[N, num_classes]``.

        In training mode (``model.train()``, the default) batch statistics are used
        and the running ones updated, and ``learned`` samples its masks from the
        ``"masks"`` stream (of ``rngs`` if given); in eval mode it uses their top-K;
        once frozen, the recorded connectivity in both.
        """
        train = not self.use_running_average
        params = _unwrap(self.weights)
        real, forward = self._masks(train=train, rngs=rngs)
        if self.net.has_masks:
            params["masks"] = real
            connectivity_policy.warn_if_outside_unit_interval(self.masks[...], self.frozen[...])
        logits, new_stats = models.apply(
            self.net,
            params,
            _unwrap(self.batch_stats),
            images,
            connectivity=forward,
            train=train,
        )
        if train:
            jax.tree.map(
                lambda var, value: var.set_value(value),
                self.batch_stats,
                new_stats,
                is_leaf=lambda x: isinstance(x, nnx.Variable),
            )
        return logits

    def prune(self) -> prune_lib.PrunedModel:
        """The network of the live blocks under :meth:`frozen_connectivity`
        (:func:`mcjax.prune.drop_dead_blocks`; save it with :func:`mcjax.export.save`).

        A ``learned`` network that is not frozen is pruned by the top-K of its masks,
        which must then be decided: a row whose K-th and (K+1)-th largest masks tie
        (e.g. a network never trained) is refused; ``freeze()`` first to choose.
        """
        if self.net.connectivity == "learned" and not self.is_frozen:
            prune_lib.check_top_k_decided(self.masks[...], self.net.fan_in)
        variables = self.to_variables()
        return prune_lib.drop_dead_blocks(
            self.net, variables["params"], variables["batch_stats"], self.frozen_connectivity()
        )
