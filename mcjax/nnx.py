"""MaskConnect in Flax NNX: a masked aggregation layer, a multi-branch container, ``Network``.

Thin layers over the functional core: the maths lives in :mod:`mcjax.masks`,
:mod:`mcjax.models` and :mod:`mcjax.blocks`; these modules only hold the
variables and pick the masks of a forward pass.

* :class:`Mask`: the real-valued masks, an ``nnx.Param`` subclass (so
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` trains them, ``nnx.state(model, Mask)``
  selects them and :func:`mcjax.maskconnect` gives them clipped SGD).
* :class:`MaskedAggregation`: ``[C_in, ...] -> [C_out, ...]`` through K-hot masks
  sampled from the rng stream ``"masks"`` in training, their top-K in eval mode or
  once frozen; the straight-through gradient of :func:`mcjax.masks.aggregate`.
* :class:`MultiBranch`: ``C`` copies of *any* NNX block whose inputs are learned
  K-of-``C_in`` selections of the previous branches (MaskConnect for any
  multi-branch model).
* :class:`Network`: the networks of :mod:`mcjax.architectures` by name, computing
  exactly :func:`mcjax.apply` on the functional parameter tree
  (:meth:`Network.to_variables` / :meth:`Network.from_variables`).

Modes, as in :mod:`mcjax.models`: ``learned`` (MaskConnect), ``real`` (the
real-valued masks in forward and backward), ``random`` (fixed K-hot drawn at
construction) and ``full`` (every input; ResNeXt in :class:`Network`).
``model.train()`` / ``model.eval()`` switch sampling (and batch statistics) to the
top-K (and running statistics); ``model.freeze()`` keeps the top-K in training too
(the paper's phases 2-4; pair it with ``mcjax.maskconnect(freeze_masks=True)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mcjax import connectivity as connectivity_policy
from mcjax import masks as masks_lib
from mcjax import models
from mcjax import prune as prune_lib
from mcjax.architectures import Architecture, get_architecture

Array = jax.Array

__all__ = ["Connectivity", "Mask", "MaskedAggregation", "MultiBranch", "Network"]

MASKS_STREAM = "masks"


class Mask(nnx.Param):
    """Real-valued connectivity masks ``[..., C_out, C_in]``, entries in ``[0, 1]``.

    Keep them under an attribute named ``masks``: ``nnx.Optimizer`` hands
    ``tx.update`` plain arrays, where only the name says what they are (see
    :func:`mcjax.optim.is_mask`).
    """


class Connectivity(nnx.Variable):
    """Fixed binary masks (``random`` mode): state, never trained."""


def _rng_stream(rngs: nnx.Rngs | nnx.RngStream | None):
    # As nnx.Dropout: keep a forked stream of our own, so the caller's Rngs is not shared.
    if isinstance(rngs, nnx.Rngs):
        return rngs[MASKS_STREAM].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return nnx.data(None)
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs)}")


def _sample_key(stored, rngs) -> Array:
    if rngs is not None:
        if isinstance(rngs, nnx.Rngs):
            return rngs[MASKS_STREAM]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        return rngs  # a key
    if stored is None:
        raise ValueError(
            "drawing masks needs an rng: pass rngs=nnx.Rngs(...) (stream 'masks') at "
            "construction or in the call; learned connectivity draws none after "
            "model.eval() or freeze()"
        )
    return stored()


class MaskedAggregation(nnx.Module):
    """``out[j] = sum_k m[j, k] * x[k]`` through K-hot masks learned by MaskConnect.

    Args:
      num_outputs: ``C_out``, the blocks fed.
      num_inputs: ``C_in``, the branches read.
      fan_in: ``K``, inputs per output (``1 <= K <= C_in``; ignored by ``full``).
      connectivity: ``"learned"`` | ``"real"`` | ``"random"`` | ``"full"``.
      aggregation: ``"mean"`` (divided by K; ``full``: by ``C_in``) or ``"sum"``.
      mask_init: initial value of the real-valued masks.
      rngs: the stream ``"masks"`` draws training masks (and ``random``'s fixed ones;
        an ``nnx.Rngs(0)`` falls back to its default stream).

    ``masks``: a :class:`Mask` ``[C_out, C_in]`` (``learned``, ``real``);
    ``connectivity``: a :class:`Connectivity` ``[C_out, C_in]`` (``random``).
    """

    def __init__(
        self,
        num_outputs: int,
        num_inputs: int,
        *,
        fan_in: int,
        connectivity: str = "learned",
        aggregation: str = "mean",
        mask_init: float = 0.5,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        if connectivity not in models.CONNECTIVITIES:
            raise ValueError(
                f"connectivity must be one of {models.CONNECTIVITIES}, got {connectivity!r}"
            )
        if aggregation not in models.AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {models.AGGREGATIONS}, got {aggregation!r}"
            )
        if connectivity != "full" and not 1 <= fan_in <= num_inputs:
            raise ValueError(f"fan_in K must satisfy 1 <= K <= C_in = {num_inputs}, got {fan_in}")
        self.num_outputs, self.num_inputs = num_outputs, num_inputs
        self.fan_in = fan_in
        self.mode = connectivity
        self.aggregation = aggregation
        self.deterministic = False  # nnx's train()/eval() switch: top-K when True
        self.frozen = False
        shape = (num_outputs, num_inputs)
        self.rngs = _rng_stream(rngs)
        if connectivity in ("learned", "real"):
            self.masks = Mask(jnp.full(shape, mask_init, jnp.float32))
        if connectivity == "random":
            key = _sample_key(self.rngs, None)
            self.connectivity = Connectivity(masks_lib.random_k_hot(key, shape, fan_in))

    def freeze(self) -> None:
        """From now on use the top-K of the masks, in training too (phases 2-4)."""
        self.frozen = True

    def binary_masks(self, *, rngs=None) -> Array:
        """The ``[C_out, C_in]`` masks of the next forward pass (see the class docstring)."""
        if self.mode == "full":
            return jnp.ones((self.num_outputs, self.num_inputs), jnp.float32)
        if self.mode == "random":
            return self.connectivity[...]
        real = self.masks[...]
        if self.mode == "real":
            return real
        if self.deterministic or self.frozen:
            return masks_lib.top_k(real, self.fan_in)
        return masks_lib.sample(_sample_key(self.rngs, rngs), real, self.fan_in)

    def __call__(self, branch_outputs: Array, *, rngs=None) -> Array:
        """``branch_outputs [C_in, *features]`` -> ``[C_out, *features]`` (its dtype)."""
        binary = self.binary_masks(rngs=rngs)
        real = self.masks[...] if self.mode in ("learned", "real") else binary
        mixed = masks_lib.aggregate(real, binary.astype(real.dtype), branch_outputs)
        if self.aggregation == "mean":
            fan_in = self.num_inputs if self.mode == "full" else self.fan_in
            mixed = mixed / jnp.asarray(fan_in, mixed.dtype)
        return mixed


class MultiBranch(nnx.Module):
    """``C`` copies of any block, each reading a learned K-of-``C_in`` mix of its inputs.

    ``y[j] = block_j(x'[j])`` with ``x' = MaskedAggregation(x)`` (per-branch inputs
    ``x [C_in, N, ...]``), or ``x' = x`` for every block when ``num_inputs`` is
    ``None`` (one shared input ``[N, ...]``, e.g. the first of a stack). Stack
    several to learn the connectivity of a whole multi-branch network.

    Args:
      make_block: ``make_block(rngs) -> nnx.Module``, called ``num_branches`` times.
      num_branches: ``C``.
      num_inputs: ``C_in`` of the per-branch input, or ``None`` for a shared input.
      fan_in, connectivity, aggregation, mask_init: of the :class:`MaskedAggregation`.
      rngs: for the blocks' parameters and the ``"masks"`` stream.
    """

    def __init__(
        self,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        num_branches: int,
        *,
        num_inputs: int | None,
        fan_in: int = 1,
        connectivity: str = "learned",
        aggregation: str = "mean",
        mask_init: float = 0.5,
        rngs: nnx.Rngs,
    ):
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

    def freeze(self) -> None:
        """Top-K connectivity from now on, in training too."""
        if self.mix is not None:
            self.mix.freeze()

    def __call__(self, x: Array, *, rngs=None, **block_kwargs) -> Array:
        """``x [C_in, N, ...]`` (or shared ``[N, ...]``) -> ``[C, N, ...]``."""
        inputs = [x] * len(self.blocks) if self.mix is None else list(self.mix(x, rngs=rngs))
        return jnp.stack(
            [block(x_j, **block_kwargs) for block, x_j in zip(self.blocks, inputs, strict=True)]
        )


def _wrap(tree, variable_type):
    return jax.tree.map(variable_type, tree)


def _unwrap(tree):
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Network(nnx.Module):
    """A network of :mod:`mcjax.architectures` as an NNX module: ``images -> logits``.

    Same arguments and defaults as :class:`mcjax.models.Network` (``arch`` may be a
    name, e.g. ``"20,4,8"``; any other field of it passes through), plus ``rngs``
    (stream ``"params"`` for the weights, ``"masks"`` for the training masks) and
    ``variables`` (functional variables to hold instead of fresh ones). Runs
    :func:`mcjax.apply`: the same logits, gradients and batch statistics as the
    functional network on the same weights.

    Variables: ``weights`` (``nnx.Param``: ``stem``, ``modules``, ``head`` as in the
    functional ``params``), ``masks`` (:class:`Mask` ``[L-1, C, C]``: ``learned``,
    ``real``), ``batch_stats`` (``nnx.BatchStat``), ``connectivity``
    (:class:`Connectivity`: ``random``).
    """

    def __init__(
        self,
        arch: str | Architecture,
        *,
        num_classes: int,
        fan_in: int = 4,
        connectivity: str = "learned",
        aggregation: str = "mean",
        in_channels: int = 3,
        branch_impl: str = "auto",
        mask_init: float = 0.5,
        dtype: Any = jnp.float32,
        zero_init_residual: bool = False,
        rngs: nnx.Rngs,
        variables: dict | None = None,
        **network_options: Any,
    ):
        self.net = models.Network(
            get_architecture(arch) if isinstance(arch, str) else arch,
            num_classes=num_classes,
            in_channels=in_channels,
            connectivity=connectivity,
            fan_in=fan_in,
            aggregation=aggregation,
            branch_impl=branch_impl,
            mask_init=mask_init,
            dtype=dtype,
            zero_init_residual=zero_init_residual,
            **network_options,
        )
        if variables is None:
            variables = models.init(rngs.params(), self.net)
        params = dict(variables["params"])
        real_masks = params.pop("masks", None)
        self.weights = nnx.data(_wrap(params, nnx.Param))
        self.batch_stats = nnx.data(_wrap(dict(variables["batch_stats"]), nnx.BatchStat))
        if self.net.has_masks:
            self.masks = Mask(jnp.asarray(real_masks))
        if self.net.connectivity == "random":
            self.connectivity = Connectivity(jnp.asarray(variables["connectivity"]))
        self.rngs = _rng_stream(rngs)
        self.use_running_average = False  # nnx's train()/eval() switch
        self.frozen = False

    @classmethod
    def from_variables(cls, net: models.Network, variables: dict, *, rngs=None) -> Network:
        """The NNX network holding the functional ``variables`` of ``net`` (as from
        :func:`mcjax.init`: ``params``, ``batch_stats``, ``connectivity``)."""
        options = {f.name: getattr(net, f.name) for f in dataclasses.fields(net)}
        arch = options.pop("arch")
        return cls(
            arch,
            **options,
            rngs=rngs if rngs is not None else nnx.Rngs(0),
            variables=variables,
        )

    def to_variables(self) -> dict:
        """The functional ``{"params", "batch_stats", "connectivity"}`` of ``self.net``."""
        params = _unwrap(self.weights)
        if self.net.has_masks:
            params["masks"] = self.masks[...]
        return {
            "params": params,
            "batch_stats": _unwrap(self.batch_stats),
            "connectivity": (self.connectivity[...] if self.net.connectivity == "random" else None),
        }

    def freeze(self) -> None:
        """Use the top-K of the masks from now on, in training too (phases 2-4)."""
        self.frozen = True

    def frozen_connectivity(self) -> Array | None:
        """The fixed masks of eval mode: top-K (``learned``), the draw (``random``),
        the real-valued masks (``real``), or ``None`` (``full``)."""
        if self.net.connectivity == "learned":
            return masks_lib.top_k(self.masks[...], self.net.fan_in)
        if self.net.connectivity == "random":
            return self.connectivity[...]
        if self.net.connectivity == "real":
            return self.masks[...]
        return None

    def __call__(self, images: Array, *, rngs=None) -> Array:
        """``images [N, H, W, in_channels]`` -> float32 logits ``[N, num_classes]``.

        In training mode (``model.train()``, the default) batch statistics are used
        and the running ones updated, and ``learned`` samples its masks from the
        ``"masks"`` stream (of ``rngs`` if given); in eval mode, or once frozen, it
        uses their top-K.
        """
        variables = self.to_variables()
        train = not self.use_running_average
        sample = self.net.connectivity == "learned" and train and not self.frozen
        connectivity = connectivity_policy.step_masks(
            self.net,
            variables["params"],
            None if sample else self.frozen_connectivity(),
            frozen=self.frozen,
            train=train,
            key=_sample_key(self.rngs, rngs) if sample else None,
        )
        logits, new_stats = models.apply(
            self.net,
            variables["params"],
            variables["batch_stats"],
            images,
            connectivity=connectivity,
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
        """The network of the live blocks under the frozen connectivity
        (:func:`mcjax.prune.drop_dead_blocks`; save it with :func:`mcjax.export.save`)."""
        variables = self.to_variables()
        return prune_lib.drop_dead_blocks(
            self.net, variables["params"], variables["batch_stats"], self.frozen_connectivity()
        )
