"""MaskConnect in Flax Linen: a masked aggregation layer, a multi-branch container, ``Network``.

The Linen counterparts of :mod:`mcjax.nnx`, thin layers over the functional core
(:mod:`mcjax.masks`, :mod:`mcjax.models`):

* :class:`MaskedAggregation`: ``[C_in, ...] -> [C_out, ...]``; its real-valued
  masks are the param ``masks`` (so :func:`mcjax.maskconnect` finds them at any
  depth); training masks are drawn from the rng stream ``"masks"``
  (``apply(..., rngs={"masks": key})``); ``train=False`` or ``frozen=True`` uses
  their top-K; the gradient is :func:`mcjax.masks.aggregate`'s straight-through one.
* :class:`MultiBranch`: ``C`` copies of *any* Linen block (a template module,
  cloned) whose inputs are learned K-of-``C_in`` mixes of the previous branches.
* :class:`Network`: the networks of :mod:`mcjax.architectures`; its variables
  *are* the functional ones (``params`` with ``stem``, ``modules``, ``head``,
  ``masks``; ``batch_stats``; ``connectivity`` for ``random``), so
  ``network.apply(variables, images, train=...)`` and :func:`mcjax.apply` agree
  on the same weights. Train with ``mutable=["batch_stats"]``, as Flax's BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcjax import connectivity as connectivity_policy
from mcjax import masks as masks_lib
from mcjax import models
from mcjax import prune as prune_lib
from mcjax.architectures import Architecture, get_architecture

Array = jax.Array

__all__ = [
    "MaskedAggregation",
    "MultiBranch",
    "Network",
    "frozen_connectivity",
    "functional_variables",
    "linen_variables",
    "prune",
]

MASKS_STREAM = "masks"
CONNECTIVITY_COLLECTION = "connectivity"


class MaskedAggregation(nn.Module):
    """``out[j] = sum_k m[j, k] * x[k]`` through K-hot masks learned by MaskConnect.

    Attributes:
      num_outputs: ``C_out``; ``C_in`` is the leading axis of the input.
      fan_in: ``K`` (ignored by ``full``).
      connectivity: ``"learned"`` | ``"real"`` | ``"random"`` | ``"full"``.
      aggregation: ``"mean"`` (divided by K; ``full``: by ``C_in``) or ``"sum"``.
      mask_init: initial value of the param ``masks [C_out, C_in]`` (learned, real).
      frozen: use the top-K in training too (the paper's phases 2-4).

    ``random`` keeps its draw (made from the ``"params"`` rng at init) in the
    collection ``"connectivity"``, under ``masks``.
    """

    num_outputs: int
    fan_in: int
    connectivity: str = "learned"
    aggregation: str = "mean"
    mask_init: float = 0.5
    frozen: bool = False

    @nn.compact
    def __call__(self, branch_outputs: Array, *, train: bool) -> Array:
        """``branch_outputs [C_in, *features]`` -> ``[C_out, *features]`` (its dtype)."""
        if self.connectivity not in models.CONNECTIVITIES:
            raise ValueError(
                f"connectivity must be one of {models.CONNECTIVITIES}, got {self.connectivity!r}"
            )
        if self.aggregation not in models.AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {models.AGGREGATIONS}, got {self.aggregation!r}"
            )
        num_inputs = branch_outputs.shape[0]
        shape = (self.num_outputs, num_inputs)
        if self.connectivity != "full" and not 1 <= self.fan_in <= num_inputs:
            raise ValueError(
                f"fan_in K must satisfy 1 <= K <= C_in = {num_inputs}, got {self.fan_in}"
            )
        real = None
        if self.connectivity in ("learned", "real"):
            real = self.param("masks", nn.initializers.constant(self.mask_init), shape)
        if self.connectivity == "full":
            binary = jnp.ones(shape, jnp.float32)
        elif self.connectivity == "random":
            binary = self.variable(
                CONNECTIVITY_COLLECTION,
                "masks",
                lambda: masks_lib.random_k_hot(self.make_rng("params"), shape, self.fan_in),
            ).value
        elif self.connectivity == "real":
            binary = real
        elif train and not self.frozen:
            binary = masks_lib.sample(self.make_rng(MASKS_STREAM), real, self.fan_in)
        else:
            binary = masks_lib.top_k(real, self.fan_in)
        if real is None:
            real = binary
        mixed = masks_lib.aggregate(real, binary.astype(real.dtype), branch_outputs)
        if self.aggregation == "mean":
            divisor = num_inputs if self.connectivity == "full" else self.fan_in
            mixed = mixed / jnp.asarray(divisor, mixed.dtype)
        return mixed


class MultiBranch(nn.Module):
    """``C`` copies of any block, each reading a learned K-of-``C_in`` mix of its inputs.

    ``y[j] = block_j(x'[j])`` with ``x' = MaskedAggregation(x)`` for per-branch
    inputs ``x [C_in, N, ...]``, or ``x' = x`` for every block when
    ``shared_input`` (one input ``[N, ...]``, e.g. the first of a stack).

    Attributes:
      block: a template module (e.g. ``nn.Dense(64)``), cloned into ``branch_0``,
        ``branch_1``, ... with parameters of their own.
      num_branches: ``C``.
      shared_input: whether the input is one ``[N, ...]`` array fed to every block.
      fan_in, connectivity, aggregation, mask_init, frozen: of the
        :class:`MaskedAggregation` (submodule ``mix``, whose param is ``masks``).
    """

    block: nn.Module
    num_branches: int
    shared_input: bool = False
    fan_in: int = 1
    connectivity: str = "learned"
    aggregation: str = "mean"
    mask_init: float = 0.5
    frozen: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool, **block_kwargs) -> Array:
        """``x [C_in, N, ...]`` (or shared ``[N, ...]``) -> ``[C, N, ...]``."""
        if self.shared_input:
            inputs = [x] * self.num_branches
        else:
            mixed = MaskedAggregation(
                self.num_branches,
                self.fan_in,
                connectivity=self.connectivity,
                aggregation=self.aggregation,
                mask_init=self.mask_init,
                frozen=self.frozen,
                name="mix",
            )(x, train=train)
            inputs = list(mixed)
        return jnp.stack(
            [
                self.block.clone(parent=self, name=f"branch_{j}")(x_j, **block_kwargs)
                for j, x_j in enumerate(inputs)
            ]
        )


class Network(nn.Module):
    """A network of :mod:`mcjax.architectures` as a Linen module: ``images -> logits``.

    Attributes: as :class:`mcjax.models.Network` (``arch`` may be a name, e.g.
    ``"20,4,8"``), plus ``frozen`` (top-K masks in training too). Its variables are
    :func:`mcjax.init`'s: ``init`` draws them from the ``"params"`` rng; training
    calls need the ``"masks"`` rng (``learned``) and ``mutable=["batch_stats"]``.
    With ``mutable=["intermediates"]`` the masks a pass used are returned under
    ``intermediates/connectivity`` (``None`` for ``full``).
    """

    arch: str | Architecture
    num_classes: int
    fan_in: int = 4
    connectivity: str = "learned"
    aggregation: str = "mean"
    in_channels: int = 3
    branch_impl: str = "auto"
    mask_init: float = 0.5
    dtype: Any = jnp.float32
    zero_init_residual: bool = False
    full_per_branch_bn: bool = False
    frozen: bool = False

    @property
    def functional(self) -> models.Network:
        """The :class:`mcjax.models.Network` this module runs."""
        arch = get_architecture(self.arch) if isinstance(self.arch, str) else self.arch
        return models.Network(
            arch,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            connectivity=self.connectivity,
            fan_in=self.fan_in,
            aggregation=self.aggregation,
            branch_impl=self.branch_impl,
            mask_init=self.mask_init,
            dtype=self.dtype,
            zero_init_residual=self.zero_init_residual,
            full_per_branch_bn=self.full_per_branch_bn,
        )

    @classmethod
    def from_functional(cls, net: models.Network, **kwargs) -> Network:
        """The Linen module of ``net``; its variables are ``mcjax.init(key, net)``'s."""
        return cls(
            net.arch,
            num_classes=net.num_classes,
            fan_in=net.fan_in,
            connectivity=net.connectivity,
            aggregation=net.aggregation,
            in_channels=net.in_channels,
            branch_impl=net.branch_impl,
            mask_init=net.mask_init,
            dtype=net.dtype,
            zero_init_residual=net.zero_init_residual,
            full_per_branch_bn=net.full_per_branch_bn,
            **kwargs,
        )

    @nn.compact
    def __call__(self, images: Array, *, train: bool) -> Array:
        """``images [N, H, W, in_channels]`` -> float32 logits ``[N, num_classes]``."""
        net = self.functional
        initial = None
        if self.is_initializing():
            initial = models.init(self.make_rng("params"), net)

        def variable(collection: str, name: str):
            return self.variable(collection, name, lambda: initial[collection][name]).value

        names = ["stem", "modules", "head"] + (["masks"] if net.has_masks else [])
        params = {name: variable("params", name) for name in names}
        batch_stats = {name: variable("batch_stats", name) for name in ("stem", "modules")}
        fixed = None
        if net.connectivity == "random":
            fixed = self.variable(
                CONNECTIVITY_COLLECTION, "masks", lambda: initial["connectivity"]
            ).value
        sample = net.connectivity == "learned" and train and not self.frozen
        if net.connectivity == "learned" and not sample:
            fixed = masks_lib.top_k(params["masks"], net.fan_in)
        connectivity = connectivity_policy.step_masks(
            net,
            params,
            fixed,
            frozen=self.frozen,
            train=train,
            key=self.make_rng(MASKS_STREAM) if sample else None,
        )
        # The masks this pass used (the sampled ones, say), for mutable=["intermediates"].
        self.sow("intermediates", "connectivity", connectivity)
        logits, new_stats = models.apply(
            net, params, batch_stats, images, connectivity=connectivity, train=train
        )
        if train and not self.is_initializing():
            for name, value in new_stats.items():
                self.put_variable("batch_stats", name, value)
        return logits


def functional_variables(variables) -> dict:
    """A Linen :class:`Network`'s variables as :func:`mcjax.apply` takes them.

    ``{"params", "batch_stats", "connectivity"}`` (``connectivity`` the fixed
    ``random`` draw or ``None``), plain dicts. The reverse needs nothing:
    ``{"params": p, "batch_stats": s}`` (plus ``{"connectivity": {"masks": c}}``
    for ``random``) is a Linen variables dict.
    """
    variables = nn.FrozenDict(variables).unfreeze()
    fixed = variables.get(CONNECTIVITY_COLLECTION, {}).get("masks")
    return {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "connectivity": fixed,
    }


def linen_variables(variables: dict) -> dict:
    """:func:`mcjax.init`'s variables as a Linen :class:`Network` takes them."""
    result = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if variables.get("connectivity") is not None:
        result[CONNECTIVITY_COLLECTION] = {"masks": variables["connectivity"]}
    return result


def frozen_connectivity(module: Network, variables) -> Array | None:
    """The fixed masks of eval mode: top-K (``learned``), the draw (``random``), the
    real-valued masks (``real``), or ``None`` (``full``)."""
    net = module.functional
    functional = functional_variables(variables)
    if net.connectivity == "learned":
        return masks_lib.top_k(functional["params"]["masks"], net.fan_in)
    if net.connectivity == "real":
        return functional["params"]["masks"]
    return functional["connectivity"]


def prune(module: Network, variables) -> prune_lib.PrunedModel:
    """The live blocks under the frozen connectivity (:func:`mcjax.prune.drop_dead_blocks`)."""
    functional = functional_variables(variables)
    return prune_lib.drop_dead_blocks(
        module.functional,
        functional["params"],
        functional["batch_stats"],
        frozen_connectivity(module, variables),
    )
