"""The paper's networks as a Linen module, and the ``"connectivity"`` collection's layout.

Re-exported by :mod:`mcjax.linen` (see its docstring and docs/flax.md): :class:`Network`,
:func:`functional_variables`, :func:`linen_variables`, :func:`frozen_connectivity`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcjax import checks, models
from mcjax import connectivity as connectivity_policy
from mcjax import prune as prune_lib
from mcjax.architectures import Architecture, get_architecture

Array = jax.Array

__all__ = [
    "CONNECTIVITY_COLLECTION",
    "Network",
    "frozen_connectivity",
    "functional_variables",
    "linen_variables",
    "prune_network",
]

MASKS_STREAM = "masks"
CONNECTIVITY_COLLECTION = "connectivity"
FROZEN = "frozen"
RECORD = "masks"  # learned: the K-hot record; random: the draw
REAL_RECORD = "real_masks"  # real: the real-valued masks when frozen


def frozen_state(module: nn.Module, record_name: str, make_record):
    """``(record, frozen)`` of a learned/real layer: created by ``init``; ``(None,
    None)`` (not frozen) when applied without the ``"connectivity"`` collection."""
    col = CONNECTIVITY_COLLECTION
    if not module.is_initializing() and not (
        module.has_variable(col, record_name) and module.has_variable(col, FROZEN)
    ):
        return None, None
    record = module.variable(col, record_name, make_record).value
    frozen = module.variable(col, FROZEN, lambda: jnp.asarray(False)).value
    return record, frozen


class Network(nn.Module):
    """A network of :mod:`mcjax.architectures` as a Linen module: ``images -> logits``.

    Attributes: as :class:`mcjax.models.Network` (``arch`` may be a name, e.g.
    ``"20,4,8"``; ``fan_in`` defaults to the paper's 4, as there). Its ``params`` and
    ``batch_stats`` are :func:`mcjax.init`'s: ``init`` draws them from the
    ``"params"`` rng; training calls need the ``"masks"`` rng (``learned``) and
    ``mutable=["batch_stats"]``. The collection ``"connectivity"`` holds the frozen
    record and flag (or ``random``'s draw), see the module docstring. With
    ``mutable=["intermediates"]`` the masks a pass used are returned under
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

    def __post_init__(self):
        if self.connectivity != "full":
            checks.check_fan_in(self.fan_in)
        super().__post_init__()

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
        """The Linen module of ``net``; its params are ``mcjax.init(key, net)``'s."""
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
        mode = net.connectivity
        if mode == "random":
            connectivity = self.variable(
                CONNECTIVITY_COLLECTION, RECORD, lambda: initial["connectivity"]
            ).value
        elif mode == "full":
            connectivity = None
        else:
            real = params["masks"]
            record, frozen = frozen_state(
                self,
                RECORD if mode == "learned" else REAL_RECORD,
                lambda: (
                    connectivity_policy.initial_fixed_masks(net, initial)
                    if mode == "learned"
                    else real
                ),
            )
            if mode == "learned" and connectivity_policy.concrete_bool(frozen) is not False:
                checks.check_connectivity(
                    record, net.arch.mask_shapes, k=net.fan_in, name="the frozen record"
                )
            params["masks"], connectivity = connectivity_policy.layer_masks(
                mode,
                real,
                record,
                frozen,
                train=train,
                fan_in=net.fan_in,
                key=lambda: self.make_rng(MASKS_STREAM),
            )
            if not self.is_initializing():  # eager applies only (concrete values)
                connectivity_policy.warn_if_outside_unit_interval(real, frozen)
        # The masks this pass used (the sampled ones, say), for mutable=["intermediates"].
        self.sow("intermediates", "connectivity", connectivity)
        logits, new_stats = models.apply(
            net, params, batch_stats, images, connectivity=connectivity, train=train
        )
        if train and not self.is_initializing():
            for name, value in new_stats.items():
                self.put_variable("batch_stats", name, value)
        return logits


def plain(variables) -> dict:
    return nn.FrozenDict(variables).unfreeze()


def functional_variables(variables) -> dict:
    """A Linen :class:`Network`'s variables as :func:`mcjax.apply` takes them.

    ``{"params", "batch_stats", "connectivity"}`` (``connectivity`` the fixed
    ``random`` draw or ``None``: :func:`mcjax.init`'s layout), plain dicts. A frozen
    record is :func:`frozen_connectivity`'s. The reverse is :func:`linen_variables`.
    """
    variables = plain(variables)
    collection = variables.get(CONNECTIVITY_COLLECTION, {})
    fixed = None if FROZEN in collection else collection.get(RECORD)
    return {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "connectivity": fixed,
    }


def linen_variables(variables: dict) -> dict:
    """:func:`mcjax.init`'s variables as a Linen :class:`Network` takes them (no frozen
    record: not frozen; :func:`freeze` adds one)."""
    result = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if variables.get("connectivity") is not None:
        result[CONNECTIVITY_COLLECTION] = {RECORD: variables["connectivity"]}
    return result


def frozen_connectivity(module: Network, variables) -> Array | None:
    """The masks of evaluation: the record once frozen, else the top-K of the masks
    (``learned``) or the masks (``real``); ``random``'s draw; ``None`` (``full``)."""
    net = module.functional
    variables = plain(variables)
    collection = variables.get(CONNECTIVITY_COLLECTION, {})
    if net.connectivity == "random":
        return collection[RECORD]
    if net.connectivity == "full":
        return None
    record = collection.get(RECORD if net.connectivity == "learned" else REAL_RECORD)
    return connectivity_policy.layer_masks(
        net.connectivity,
        variables["params"]["masks"],
        record,
        collection.get(FROZEN),
        train=False,
        fan_in=net.fan_in,
    )[1]


def is_frozen_flag(flag) -> bool:
    return bool(connectivity_policy.concrete_bool(None if flag is None else jnp.all(flag)))


def prune_network(module: Network, variables) -> prune_lib.PrunedModel:
    """The :class:`mcjax.prune.PrunedModel` of a :class:`Network` under
    :func:`frozen_connectivity` (for :func:`mcjax.export.save`); an unfrozen ``learned``
    network's top-K must be decided (no tie at the K-th place)."""
    net = module.functional
    functional = functional_variables(variables)
    collection = plain(variables).get(CONNECTIVITY_COLLECTION, {})
    if net.connectivity == "learned" and not is_frozen_flag(collection.get(FROZEN)):
        prune_lib.check_top_k_decided(functional["params"]["masks"], net.fan_in)
    return prune_lib.drop_dead_blocks(
        net,
        functional["params"],
        functional["batch_stats"],
        frozen_connectivity(module, variables),
    )
