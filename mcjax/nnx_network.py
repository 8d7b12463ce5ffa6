"""The networks of :mod:`mcjax.architectures` as an NNX module (re-exported by :mod:`mcjax.nnx`).

:class:`Network` holds the functional parameter tree as NNX variables and runs
:func:`mcjax.apply`; its masks, frozen record and flag are the types of
:mod:`mcjax.nnx_variables`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mcjax import checks, models
from mcjax import connectivity as connectivity_policy
from mcjax import masks as masks_lib
from mcjax import prune as prune_lib
from mcjax.architectures import Architecture, get_architecture
from mcjax.nnx_variables import (
    Connectivity,
    Frozen,
    Mask,
    is_frozen,
    key_source,
    rng_stream,
    set_flag,
)

Array = jax.Array

__all__ = ["Network"]


def _wrap(tree, variable_type):
    return jax.tree.map(variable_type, tree)


def _unwrap(tree):
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Network(nnx.Module):
    """A network of :mod:`mcjax.architectures` as an NNX module: ``images -> logits``.

    Same arguments and defaults as :class:`mcjax.models.Network` (``arch`` may be a
    name, e.g. ``"20,4,8"``; ``fan_in`` defaults to the paper's 4, as there; any other
    field passes through), plus ``rngs`` (stream ``"params"`` for the weights,
    ``"masks"`` for the training masks), ``variables`` (functional variables to hold
    instead of fresh ones) and ``frozen_connectivity`` (start frozen to these
    ``[L-1, C, C]`` masks, e.g. a trainer's ``TrainState.fixed_masks``). Runs
    :func:`mcjax.apply`: the same logits, gradients and batch statistics as the
    functional network on the same weights and masks.

    Variables: ``weights`` (``nnx.Param``: ``stem``, ``modules``, ``head`` as in the
    functional ``params``), ``masks`` (:class:`Mask` ``[L-1, C, C]``: ``learned``,
    ``real``), ``batch_stats`` (``nnx.BatchStat``), ``connectivity``
    (:class:`Connectivity`: ``random``'s draw, or the record of ``freeze()``),
    ``frozen`` (:class:`Frozen`: ``learned``, ``real``).
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
        frozen_connectivity: Array | None = None,
        **network_options: Any,
    ):
        if connectivity != "full":
            checks.check_fan_in(fan_in)
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
        mode = self.net.connectivity
        if self.net.has_masks:
            real = jnp.asarray(real_masks)
            self.masks = Mask(real)
            placeholder = masks_lib.top_k(real, self.net.fan_in) if mode == "learned" else real
            self.connectivity = Connectivity(placeholder)
            self.frozen = Frozen(jnp.asarray(False))
        if mode == "random":
            self.connectivity = Connectivity(jnp.asarray(variables["connectivity"]))
        self.rngs = rng_stream(rngs)
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
        ``frozen_connectivity`` when given."""
        options = {f.name: getattr(net, f.name) for f in dataclasses.fields(net)}
        arch = options.pop("arch")
        return cls(
            arch,
            **options,
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
        return is_frozen(self.frozen)

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
        set_flag(self.frozen, True)

    def unfreeze(self) -> None:
        """Back to learning: sampled masks in training, top-K in evaluation."""
        if self.net.has_masks:
            set_flag(self.frozen, False)

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
            key=key_source(self.rngs, rngs),
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
