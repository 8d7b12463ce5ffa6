"""MaskConnect in Flax Linen: a masked aggregation layer, a multi-branch container, ``Network``.

The Linen counterparts of :mod:`mcjax.nnx`, thin layers over the functional core
(:mod:`mcjax.masks`, :mod:`mcjax.models`); the guide is docs/flax.md.

* :class:`MaskedAggregation`: ``[C_in, ...] -> [C_out, ...]``; its real-valued
  masks are the param ``masks``; training masks are drawn from the rng stream
  ``"masks"`` (``apply(..., rngs={"masks": key})``); ``train=False`` uses their
  top-K; the gradient is :func:`mcjax.masks.aggregate`'s straight-through one.
* :class:`MultiBranch`: ``C`` copies of *any* Linen block (a template module,
  cloned) whose inputs are learned K-of-``C_in`` mixes of the previous branches.
* :class:`Network`: the networks of :mod:`mcjax.architectures`; its ``params`` and
  ``batch_stats`` *are* the functional ones (``params`` with ``stem``, ``modules``,
  ``head``, ``masks``), so ``network.apply(variables, images, train=...)`` and
  :func:`mcjax.apply` agree on the same weights. Train with
  ``mutable=["batch_stats"]``, as Flax's BatchNorm.

**The collection ``"connectivity"``** holds what is fixed, next to the params it
belongs to (same path): ``random``'s draw (``masks``); for ``learned`` layers the
connectivity recorded by :func:`freeze` (``masks``, K-hot, a placeholder top-K
before any freeze) and the flag ``frozen``; for ``real`` layers ``real_masks`` and
``frozen``. ``init`` creates it. Once frozen, every forward pass (training too)
reads the record, whatever an optimizer does to the params ``masks``, which then
get a zero gradient; :func:`unfreeze` goes back. Apply the collection with the
params (``{"params": ..., "connectivity": ...}``): without it, ``learned`` and
``real`` layers are not frozen.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import checks, models
from mcjax import connectivity as connectivity_policy
from mcjax import masks as masks_lib
from mcjax import prune as prune_lib

Array = jax.Array

__all__ = [
    "MaskedAggregation",
    "MultiBranch",
    "Network",
    "freeze",
    "frozen_connectivity",
    "functional_variables",
    "linen_variables",
    "prune",
    "unfreeze",
]

MASKS_STREAM = "masks"
CONNECTIVITY_COLLECTION = "connectivity"
FROZEN = "frozen"
RECORD = "masks"  # learned: the K-hot record; random: the draw
REAL_RECORD = "real_masks"  # real: the real-valued masks when frozen


def _frozen_state(module: nn.Module, record_name: str, make_record):
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


class MaskedAggregation(nn.Module):
    """``out[j] = sum_k m[j, k] * x[k]`` through K-hot masks learned by MaskConnect.

    Attributes:
      num_outputs: ``C_out``; ``C_in`` is the leading axis of the input.
      fan_in: ``K`` (``1 <= K <= C_in``); required but for ``full`` (every input).
      connectivity: ``"learned"`` | ``"real"`` | ``"random"`` | ``"full"``.
      aggregation: ``"mean"`` (divided by K; ``full``: by ``C_in``) or ``"sum"``.
      mask_init: initial value of the param ``masks [C_out, C_in]`` (learned, real).

    Collection ``"connectivity"`` (see the module docstring): ``random``'s draw (made
    from the ``"params"`` rng at init) under ``masks``; ``learned``: ``masks`` (the
    frozen record) and ``frozen``; ``real``: ``real_masks`` and ``frozen``.
    """

    num_outputs: int
    fan_in: int | None = None
    connectivity: str = "learned"
    aggregation: str = "mean"
    mask_init: float = 0.5

    def __post_init__(self):
        checks.check_layer_options(self.connectivity, self.aggregation, self.mask_init)
        checks.layer_fan_in(self.fan_in, None, self.connectivity)
        super().__post_init__()

    @nn.compact
    def __call__(self, branch_outputs: Array, *, train: bool) -> Array:
        """``branch_outputs [C_in, *features]`` -> ``[C_out, *features]`` (its dtype)."""
        num_inputs = branch_outputs.shape[0]
        shape = (self.num_outputs, num_inputs)
        mode = self.connectivity
        if mode != "full":
            checks.check_fan_in(self.fan_in, num_inputs)
        if mode == "full":
            real = forward = jnp.ones(shape, jnp.float32)
        elif mode == "random":
            forward = self.variable(
                CONNECTIVITY_COLLECTION,
                RECORD,
                lambda: masks_lib.random_k_hot(self.make_rng("params"), shape, self.fan_in),
            ).value
            real = forward
        else:
            masks = self.param("masks", nn.initializers.constant(self.mask_init), shape)
            record_name = RECORD if mode == "learned" else REAL_RECORD

            def placeholder():
                return masks_lib.top_k(masks, self.fan_in) if mode == "learned" else masks

            record, frozen = _frozen_state(self, record_name, placeholder)
            if mode == "learned" and connectivity_policy.concrete_bool(frozen) is not False:
                checks.check_k_hot(record, self.fan_in, name="the frozen record")
            real, forward = connectivity_policy.layer_masks(
                mode,
                masks,
                record,
                frozen,
                train=train,
                fan_in=self.fan_in,
                key=lambda: self.make_rng(MASKS_STREAM),
            )
            if not self.is_initializing():  # eager applies only (concrete values)
                connectivity_policy.warn_if_outside_unit_interval(masks, frozen)
        scale = 1.0
        if self.aggregation == "mean":
            scale = 1.0 / (num_inputs if mode == "full" else self.fan_in)
        return masks_lib.aggregate(real, forward.astype(real.dtype), branch_outputs, scale=scale)


class MultiBranch(nn.Module):
    """``C`` copies of any block, each reading a learned K-of-``C_in`` mix of its inputs.

    ``y[j] = block_j(x'[j])`` with ``x' = MaskedAggregation(x)`` for per-branch
    inputs ``x [C_in, N, *features]`` (3 axes or more: a plain batch ``[N, F]`` is
    refused), or ``x' = x`` for every block when ``shared_input`` (one input
    ``[N, ...]``, e.g. the first of a stack).

    Attributes:
      block: a template module (e.g. ``nn.Dense(64)``), cloned into ``branch_0``,
        ``branch_1``, ... with parameters of their own.
      num_branches: ``C``.
      shared_input: whether the input is one ``[N, ...]`` array fed to every block
        (then there is no mix, and giving ``fan_in`` is an error).
      fan_in, connectivity, aggregation, mask_init: of the :class:`MaskedAggregation`
        (submodule ``mix``, whose param is ``masks``); ``fan_in`` required but for
        ``full``.

    After :func:`prune`, the collection ``"connectivity"`` holds ``branches`` (the
    original indices of the blocks kept, renumbered ``branch_0...``); its length
    overrides ``num_branches``.
    """

    block: nn.Module
    num_branches: int
    shared_input: bool = False
    fan_in: int | None = None
    connectivity: str = "learned"
    aggregation: str = "mean"
    mask_init: float = 0.5

    def __post_init__(self):
        if self.shared_input:
            if self.fan_in is not None:
                raise ValueError(
                    f"fan_in={self.fan_in!r} has no effect with shared_input=True: a "
                    "MultiBranch with one shared input has no mix to choose K inputs for"
                )
        else:
            checks.check_layer_options(self.connectivity, self.aggregation, self.mask_init)
            checks.layer_fan_in(self.fan_in, None, self.connectivity)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool, **block_kwargs) -> Array:
        """``x [C_in, N, *features]`` (or shared ``[N, ...]``) -> ``[C, N, ...]``."""
        count = self.num_branches
        if self.has_variable(CONNECTIVITY_COLLECTION, "branches"):
            count = self.get_variable(CONNECTIVITY_COLLECTION, "branches").shape[0]
        if self.shared_input:
            inputs = [x] * count
        else:
            if jnp.ndim(x) < 3:
                raise ValueError(
                    f"this MultiBranch mixes per-branch inputs [C_in, N, *features], got shape "
                    f"{jnp.shape(x)}; a plain batch [N, *features] is one shared input "
                    "(shared_input=True)"
                )
            mixed = MaskedAggregation(
                count,
                self.fan_in,
                connectivity=self.connectivity,
                aggregation=self.aggregation,
                mask_init=self.mask_init,
                name="mix",
            )(x, train=train)
            inputs = list(mixed)
        return jnp.stack(
            [
                self.block.clone(parent=self, name=f"branch_{j}")(x_j, **block_kwargs)
                for j, x_j in enumerate(inputs)
            ]
        )


# --- The paper's networks ------------------------------------------------------------


_NETWORK_FIELDS = tuple(field.name for field in dataclasses.fields(models.Network))


def _declared_fields(description: type) -> dict:
    """A class namespace declaring the fields of the dataclass ``description`` (their
    annotations and defaults), for a Linen module to hold them as its own attributes."""
    annotations = typing.get_type_hints(description)
    namespace = {"__module__": __name__, "__annotations__": {}}
    for field in dataclasses.fields(description):
        namespace["__annotations__"][field.name] = annotations[field.name]
        if field.default is not dataclasses.MISSING:
            namespace[field.name] = field.default
    return namespace


# The Linen attributes of a network are the fields of mcjax.models.Network, declared there
# once: a field added there is an attribute here, with its default and its checks.
_NetworkFields = type("_NetworkFields", (nn.Module,), _declared_fields(models.Network))


class Network(_NetworkFields):
    """A network of :mod:`mcjax.architectures` as a Linen module: ``images -> logits``.

    Attributes: the fields of :class:`mcjax.models.Network`, with its order, defaults
    and checks on construction (``arch`` may be a name, e.g. ``"20,4,8"``; ``fan_in``
    defaults to the paper's 4); :attr:`functional` is that description. Its ``params``
    and ``batch_stats`` are :func:`mcjax.init`'s: ``init`` draws them from the
    ``"params"`` rng; training calls need the ``"masks"`` rng (``learned``) and
    ``mutable=["batch_stats"]``. The collection ``"connectivity"`` holds the frozen
    record and flag (or ``random``'s draw), see the module docstring. With
    ``mutable=["intermediates"]`` the masks a pass used are returned under
    ``intermediates/connectivity`` (``None`` for ``full``).
    """

    def __post_init__(self):
        self.functional  # noqa: B018 (models.Network checks every field when built)
        super().__post_init__()

    @property
    def functional(self) -> models.Network:
        """The :class:`mcjax.models.Network` this module runs."""
        return models.Network(**{name: getattr(self, name) for name in _NETWORK_FIELDS})

    @classmethod
    def from_functional(cls, net: models.Network, **kwargs) -> Network:
        """The Linen module of ``net``; its params are ``mcjax.init(key, net)``'s.
        ``kwargs`` are the Linen module's own (``name``, ``parent``)."""
        return cls(**{name: getattr(net, name) for name in _NETWORK_FIELDS}, **kwargs)

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
            record, frozen = _frozen_state(
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


def _plain(variables) -> dict:
    return nn.FrozenDict(variables).unfreeze()


def functional_variables(variables) -> dict:
    """A Linen :class:`Network`'s variables as :func:`mcjax.apply` takes them.

    ``{"params", "batch_stats", "connectivity"}`` (``connectivity`` the fixed
    ``random`` draw or ``None``: :func:`mcjax.init`'s layout), plain dicts. A frozen
    record is :func:`frozen_connectivity`'s. The reverse is :func:`linen_variables`.
    """
    variables = _plain(variables)
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
    variables = _plain(variables)
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


def _is_frozen_flag(flag) -> bool:
    return bool(connectivity_policy.concrete_bool(None if flag is None else jnp.all(flag)))


def _prune_network(module: Network, variables) -> prune_lib.PrunedModel:
    """The :class:`mcjax.prune.PrunedModel` of a :class:`Network` under
    :func:`frozen_connectivity` (for :func:`mcjax.export.save`); an unfrozen ``learned``
    network's top-K must be decided (no tie at the K-th place)."""
    net = module.functional
    functional = functional_variables(variables)
    collection = _plain(variables).get(CONNECTIVITY_COLLECTION, {})
    if net.connectivity == "learned" and not _is_frozen_flag(collection.get(FROZEN)):
        prune_lib.check_top_k_decided(functional["params"]["masks"], net.fan_in)
    return prune_lib.drop_dead_blocks(
        net,
        functional["params"],
        functional["batch_stats"],
        frozen_connectivity(module, variables),
    )


# --- Freezing and pruning ------------------------------------------------------------


def _subtree(tree: dict, path: Sequence[str]) -> dict | None:
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _frozen_nodes(collection: dict, path: tuple = ()):
    """``(path, node)`` of every learned/real layer's entry in the collection."""
    if FROZEN in collection and (RECORD in collection or REAL_RECORD in collection):
        yield path, collection
    for name, child in collection.items():
        if isinstance(child, dict):
            yield from _frozen_nodes(child, (*path, name))


def _where(path: tuple) -> str:
    return "/".join(path) or "the network"


def freeze(variables) -> dict:
    """``variables`` with every ``learned``/``real`` layer frozen (a new dict).

    Each layer's record becomes the top-K of its params ``masks`` (``learned``; K is
    the layer's, read from its record, whose rows hold K ones; ties go to the lower
    index) or the masks themselves (``real``), and its flag True. From then on its
    forward passes read the record (``variables`` must be applied whole, with the
    ``"connectivity"`` collection that ``init`` made). Needs concrete values.
    """
    variables = _plain(variables)
    collection = variables.get(CONNECTIVITY_COLLECTION)
    nodes = list(_frozen_nodes(collection)) if collection else []
    if not nodes:
        raise ValueError(
            "these variables hold no learned or real connectivity to freeze (the "
            "'connectivity' collection comes from init: keep it with the params)"
        )
    for path, node in nodes:
        real = _subtree(variables["params"], path)
        if real is None or "masks" not in real:
            raise ValueError(f"no params 'masks' at {_where(path)} for its frozen record")
        real = jnp.asarray(real["masks"])
        connectivity_policy.warn_if_outside_unit_interval(real)
        if RECORD in node:
            row_sums = np.asarray(node[RECORD]).sum(-1)
            k = int(row_sums.reshape(-1)[0])
            if not np.all(row_sums == k):
                raise ValueError(f"the record at {_where(path)} has rows with different K")
            node[RECORD] = masks_lib.top_k(real, k)
        else:
            node[REAL_RECORD] = real
        node[FROZEN] = jnp.ones(jnp.shape(node[FROZEN]), jnp.bool_)
    return variables


def unfreeze(variables) -> dict:
    """``variables`` with every ``learned``/``real`` layer learning again (a new dict)."""
    variables = _plain(variables)
    for _, node in _frozen_nodes(variables.get(CONNECTIVITY_COLLECTION, {})):
        node[FROZEN] = jnp.zeros(jnp.shape(node[FROZEN]), jnp.bool_)
    return variables


def prune(module: nn.Module, variables, *args, **kwargs):
    """The model without the blocks nothing reads.

    * A :class:`Network`: ``prune(network, variables)`` returns the
      :class:`mcjax.prune.PrunedModel` under :func:`frozen_connectivity` (for
      :func:`mcjax.export.save`).
    * Any other module built of :class:`MultiBranch` layers: ``prune(module,
      variables, *args, **kwargs)`` with an example call (e.g. ``x, train=False``)
      returns new variables, with which ``module.apply(pruned_variables, ...)`` runs
      only the live blocks (each ``MultiBranch`` reads its count from
      ``connectivity/.../branches``; mixes are sliced and frozen). The supported
      models, the liveness rule and the check of the output on the example call are
      those of :func:`mcjax.nnx.prune`.

    A ``learned`` layer that is not frozen is pruned by the top-K of its masks, which
    must be decided (no tie at the K-th place: a network never trained is refused).
    """
    if isinstance(module, Network):
        if args or kwargs:
            raise TypeError("prune(network, variables) takes no example call")
        return _prune_network(module, variables)
    return _prune_model(module, _plain(variables), args, kwargs)


def _prune_model(module: nn.Module, variables: dict, args, kwargs) -> dict:
    calls = []

    def record(next_fun, call_args, call_kwargs, context):
        if isinstance(context.module, MultiBranch) and context.method_name == "__call__":
            calls.append((tuple(context.module.scope.path), context.module, call_args[0].shape))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        reference = module.apply(variables, *args, **kwargs)
    if not calls:
        raise ValueError("prune found no MultiBranch layer in the example call of the module")
    paths = [path for path, _, _ in calls]
    if len(set(paths)) != len(paths):
        raise ValueError("prune needs each MultiBranch layer to run once per call")
    collection = variables.get(CONNECTIVITY_COLLECTION, {})
    counts, mixes, reads_previous, modes = [], [], [], []
    for index, (path, layer, input_shape) in enumerate(calls):
        kept = _subtree(collection, (*path, "branches"))
        counts.append(layer.num_branches if kept is None else len(kept))
        mode = None if layer.shared_input else layer.connectivity
        modes.append(mode)
        if mode is None:
            mixes.append(None)
            reads_previous.append(False)
            continue
        mix_params = _subtree(variables["params"], (*path, "mix")) or {}
        mix_state = _subtree(collection, (*path, "mix")) or {}
        if mode == "full":
            used = np.ones((counts[-1], input_shape[0]))
        elif mode == "random":
            used = mix_state[RECORD]
        else:
            frozen = mix_state.get(FROZEN)
            if mode == "learned" and not _is_frozen_flag(frozen):
                prune_lib.check_top_k_decided(
                    mix_params["masks"], layer.fan_in, where=_where((*path, "mix"))
                )
            used = connectivity_policy.layer_masks(
                mode,
                mix_params["masks"],
                mix_state.get(RECORD if mode == "learned" else REAL_RECORD),
                frozen,
                train=False,
                fan_in=layer.fan_in,
            )[1]
        mixes.append(np.asarray(used))
        reads_previous.append(index > 0 and input_shape[0] == counts[index - 1])
    live = prune_lib.chain_liveness(counts, mixes, reads_previous)
    new = jax.tree.map(lambda x: x, variables)  # a copy of the containers
    for index, (path, _, _) in enumerate(calls):
        keep = live[index]
        kept = np.flatnonzero(keep)
        for col in new.values():
            node = _subtree(col, path)
            if not isinstance(node, dict):
                continue
            branches = {k: node.pop(k) for k in [k for k in node if k.startswith("branch_")]}
            for new_index, old_index in enumerate(kept):
                if f"branch_{old_index}" in branches:
                    node[f"branch_{new_index}"] = branches[f"branch_{old_index}"]
        state = new.setdefault(CONNECTIVITY_COLLECTION, {})
        node = state
        for name in path:
            node = node.setdefault(name, {})
        original = node.get("branches", np.arange(counts[index]))
        node["branches"] = jnp.asarray(np.asarray(original)[kept], jnp.int32)
        mode = modes[index]
        if mode is None or mode == "full":
            continue
        columns = live[index - 1] if reads_previous[index] else np.ones(mixes[index].shape[1], bool)
        used = jnp.asarray(mixes[index][keep][:, columns], jnp.float32)
        mix_state = node.setdefault("mix", {})
        if mode == "random":
            mix_state[RECORD] = used
            continue
        mix_params = _subtree(new["params"], (*path, "mix"))
        mix_params["masks"] = jnp.asarray(mix_params["masks"])[keep][:, columns]
        mix_state[RECORD if mode == "learned" else REAL_RECORD] = used
        mix_state[FROZEN] = jnp.asarray(True)
    pruned_output = module.apply(new, *args, **kwargs)
    prune_lib.check_pruned_output(pruned_output, reference)
    return new
