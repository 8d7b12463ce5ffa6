"""Whole networks: ``stem -> L multi-branch modules -> head`` (docs/design.md §1).

A :class:`Network` is a static, hashable description (architecture, classes,
connectivity mode, fan-in, aggregation, branch formulation, compute dtype).
:func:`init` makes its variables and :func:`apply` runs it::

    net = mcjax.Network(mcjax.get_architecture("20,4,8"), num_classes=100)
    variables = mcjax.init(jax.random.key(0), net)
    binary = mcjax.masks.sample(key, variables["params"]["masks"], net.fan_in)  # phase 1
    logits, batch_stats = mcjax.apply(
        net, variables["params"], variables["batch_stats"], images,
        connectivity=binary, train=True)

Connectivity modes (``Network.connectivity``):

* ``"learned"``: MaskConnect. ``params["masks"]`` holds the real-valued masks
  ``[L-1, C, C]``; each step feeds K-hot masks sampled from them (or, once
  frozen, their top-K) and the gradient reaches them straight-through.
* ``"full"``: the exact ResNeXt module on one stream (``connectivity=None``):
  the C bottlenecks' last 1x1 convs as one dense conv over their concatenation
  and one BN. ``Network(full_per_branch_bn=True)`` keeps one BN per branch
  instead (the masked modes' parameters: the "same parameters" ablation).
* ``"random"``: K-hot masks drawn once at init (``variables["connectivity"]``).
* ``"real"``: the real-valued masks themselves in forward and backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mcjax import blocks, checks, layers, masks
from mcjax.architectures import Architecture, get_architecture
from mcjax.checks import AGGREGATIONS, CONNECTIVITIES

Array = jax.Array

# Compute dtypes by config name; parameters, BN statistics and logits stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "AGGREGATIONS",
    "CONNECTIVITIES",
    "DTYPES",
    "Network",
    "apply",
    "init",
]


@dataclasses.dataclass(frozen=True)
class Network:
    """Static description of a network (hashable: usable as a ``jit`` static arg).

    The one declaration of a network's fields: :class:`mcjax.nnx.Network` and
    :class:`mcjax.linen.Network` take theirs from here (``dataclasses.fields``), so a
    field added here reaches both.

    Attributes:
      arch: the :class:`~mcjax.architectures.Architecture`; a name (e.g. ``"20,4,8"``)
        is resolved by :func:`~mcjax.architectures.get_architecture` on construction.
      num_classes: outputs of the head.
      in_channels: channels of the input images.
      connectivity: one of :data:`CONNECTIVITIES`.
      fan_in: K, active inputs per block (``1 <= K <= C``); ignored by ``full``.
      aggregation: ``"mean"`` (the default, as in the shipped configs: divided by
        K, so the identity path does not grow K-fold per module; the head then
        averages the last module's outputs instead of summing them) or ``"sum"``
        (the paper: ``x_j = sum_k m[j,k] y_k``, which diverged at the paper's
        learning rate in our runs). ``full`` has one stream and ignores it.
      branch_impl: formulation of the C branches, see :data:`mcjax.blocks.BRANCH_IMPLS`.
      mask_init: initial value of every real-valued mask entry (docs/design.md §3).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      zero_init_residual: start each block's last BN scale at 0 (see
        :func:`mcjax.blocks.init_module`); affects :func:`init` only. Off by
        default, as the ResNeXt reference.
      full_per_branch_bn: ``full`` only: keep one BN per branch after its last
        1x1 conv (``bn3 [C, c_out]``), so that ``full`` has exactly the
        parameters of the masked modes, which are the paper's Params-Train
        figures (0.28M for ``20,4,8``, 0.86M for ``29,8,8``). Off by default:
        ``full`` is ResNeXt, one BN after the sum of the branches
        (``2 * c_out * (C - 1)`` fewer parameters per module), the function the
        public ResNeXt implementations compute, and 2-2.6x faster to train on
        CPU because it never materialises C streams of width ``c_out``. The
        masked modes ignore it (each of their blocks is its own stream).
    """

    arch: Architecture | str
    num_classes: int
    in_channels: int = 3
    connectivity: str = "learned"
    fan_in: int = 4
    aggregation: str = "mean"
    branch_impl: str = "auto"
    mask_init: float = 0.5
    dtype: Any = jnp.float32
    zero_init_residual: bool = False
    full_per_branch_bn: bool = False

    def __post_init__(self):
        if isinstance(self.arch, str):
            object.__setattr__(self, "arch", get_architecture(self.arch))
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(
                f"connectivity must be one of {CONNECTIVITIES}, got {self.connectivity!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        blocks.resolve_branch_impl(self.branch_impl)
        if self.connectivity != "full":
            # The type always (a one-module network has no mask to bound K by).
            checks.check_fan_in(self.fan_in)
            for shape in self.arch.mask_shapes:
                checks.check_fan_in(self.fan_in, shape[1])
        if not 0.0 <= self.mask_init <= 1.0:
            raise ValueError(f"mask_init must lie in [0, 1], got {self.mask_init}")
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")

    @property
    def has_masks(self) -> bool:
        """Whether ``params`` holds trainable real-valued masks."""
        return self.connectivity in ("learned", "real")

    @property
    def per_branch_bn3(self) -> bool:
        """Whether every block keeps its own last BN (``bn3 [C, c_out]``, see
        :func:`mcjax.blocks.init_module`): the masked modes, and ``full`` with
        ``full_per_branch_bn``. False for ResNeXt's one BN per module."""
        return self.connectivity != "full" or self.full_per_branch_bn

    @property
    def masks_shape(self) -> tuple[int, int, int]:
        """``[L-1, C, C]`` of the stacked masks (unpruned networks)."""
        shapes = set(self.arch.mask_shapes)
        if len(shapes) != 1:
            raise ValueError("stacked masks need the same cardinality in every module")
        ((c_out, c_in),) = shapes
        return (self.arch.num_modules - 1, c_out, c_in)


def init(key: Array, net: Network) -> dict:
    """Initial variables of ``net``.

    Returns:
      ``{"params", "batch_stats", "connectivity"}``. ``params`` has ``stem``,
      ``modules`` (a list, see :func:`mcjax.blocks.init_module`), ``head``
      (``kernel [c, classes]`` zero-initialised, ``bias``) and, for ``learned``
      and ``real``, ``masks [L-1, C, C]`` filled with ``net.mask_init``.
      ``connectivity`` is the fixed K-hot ``[L-1, C, C]`` of ``random`` mode,
      else ``None``.
    """
    arch = net.arch
    k_stem, k_modules, k_random = jax.random.split(key, 3)
    stem_size = 7 if arch.stem == "imagenet" else 3
    bn_params, bn_stats = layers.bn_init((arch.stem_channels,))
    params = {
        "stem": {
            "conv": layers.he_normal(
                k_stem, (stem_size, stem_size, net.in_channels, arch.stem_channels)
            ),
            "bn": bn_params,
        },
        "modules": [],
        # A zero head gives uniform logits at init however large the features.
        "head": {
            "kernel": jnp.zeros((arch.out_channels, net.num_classes), jnp.float32),
            "bias": jnp.zeros((net.num_classes,), jnp.float32),
        },
    }
    batch_stats = {"stem": {"bn": bn_stats}, "modules": []}
    for module_key, spec in zip(
        jax.random.split(k_modules, arch.num_modules), arch.modules, strict=True
    ):
        p, s = blocks.init_module(
            module_key,
            spec,
            per_branch_bn3=net.per_branch_bn3,
            zero_init_residual=net.zero_init_residual,
        )
        params["modules"].append(p)
        batch_stats["modules"].append(s)
    connectivity = None
    if net.has_masks:
        params["masks"] = jnp.full(net.masks_shape, net.mask_init, jnp.float32)
    if net.connectivity == "random":
        connectivity = masks.random_k_hot(k_random, net.masks_shape, net.fan_in)
    return {"params": params, "batch_stats": batch_stats, "connectivity": connectivity}


def _stem(net: Network, params, stats, x, *, train, axis_name):
    stride = 2 if net.arch.stem == "imagenet" else 1
    x = layers.conv2d(x, params["conv"], stride=stride)
    x, bn_stats = layers.batch_norm(
        x, params["bn"], stats["bn"], axes=(0, 1, 2), train=train, axis_name=axis_name
    )
    x = jax.nn.relu(x)
    if net.arch.stem in ("imagenet", "cifar_maxpool"):
        x = layers.max_pool(x, window=3, stride=2)
    return x, {"bn": bn_stats}


def apply(
    net: Network,
    params: dict,
    batch_stats: dict,
    images: Array,
    *,
    connectivity: Array | Sequence[Array] | None,
    train: bool,
    axis_name: str | None = None,
) -> tuple[Array, dict]:
    """Runs the network.

    Args:
      net: the static description.
      params: as from :func:`init` (or :func:`mcjax.prune.drop_dead_blocks`).
      batch_stats: BN running statistics.
      images: ``[N, H, W, in_channels]``, any float dtype (cast to ``net.dtype``).
      connectivity: ``None`` for ``full``; otherwise the masks of modules
        ``2..L``, as ``[L-1, C, C]`` or a sequence of ``[C_i, C_{i-1}]`` (the
        training program's choice is :mod:`mcjax.connectivity`): K-hot with
        ``net.fan_in`` ones per row (``real``: the real-valued masks). Shapes are
        checked always; values when concrete, or under ``jit`` in
        :func:`mcjax.checks.checked` mode. When
        ``params`` has ``masks``, their gradient is the straight-through one of
        :func:`mcjax.masks.aggregate`.
      train: batch statistics and updated running statistics when True.
      axis_name: mapped axis for synchronised BN statistics, if any.

    Returns:
      ``(logits [N, num_classes] float32, new_batch_stats)``.
    """
    arch = net.arch
    if images.ndim != 4 or images.shape[-1] != net.in_channels:
        raise ValueError(f"images must be [N, H, W, {net.in_channels}], got shape {images.shape}")
    if (connectivity is None) != (net.connectivity == "full"):
        raise ValueError(
            f"connectivity mode {net.connectivity!r} needs "
            + ("connectivity=None" if net.connectivity == "full" else "connectivity masks")
        )
    if connectivity is not None:
        # Shapes always (static); values (binary, K ones per row) when concrete or in
        # mcjax.checks.checked mode, so a jitted step pays nothing.
        checks.check_connectivity(
            connectivity,
            arch.mask_shapes,
            k=None if net.connectivity == "real" else net.fan_in,
            binary=net.connectivity != "real",
        )
    common = dict(train=train, impl=net.branch_impl, axis_name=axis_name)
    x, stem_stats = _stem(
        net,
        params["stem"],
        batch_stats["stem"],
        images.astype(net.dtype),
        train=train,
        axis_name=axis_name,
    )
    new_stats = {"stem": stem_stats, "modules": []}
    real_masks = params.get("masks")

    for index, (spec, p, s) in enumerate(
        zip(arch.modules, params["modules"], batch_stats["modules"], strict=True)
    ):
        if connectivity is None:
            if blocks.has_per_branch_bn3(p) != net.per_branch_bn3:
                raise ValueError(
                    f"module {index + 1}: bn3 of shape {p['bn3']['scale'].shape} does not match "
                    f"full_per_branch_bn={net.full_per_branch_bn}"
                )
            x, s = blocks.resnext_module(p, s, x, stride=spec.stride, **common)
        else:
            if index > 0:
                binary = connectivity[index - 1]
                if binary.shape != (spec.cardinality, x.shape[0]):
                    raise ValueError(
                        f"module {index + 1}: masks of shape {binary.shape}, expected "
                        f"{(spec.cardinality, x.shape[0])}"
                    )
                real = binary if real_masks is None else real_masks[index - 1]
                scale = 1.0 / net.fan_in if net.aggregation == "mean" else 1.0
                x = masks.aggregate(real, binary.astype(real.dtype), x, scale=scale)
            x, s = blocks.multi_branch_module(p, s, x, stride=spec.stride, **common)
        new_stats["modules"].append(s)

    if connectivity is not None:
        x = x.mean(axis=0) if net.aggregation == "mean" else x.sum(axis=0)
    features = x.astype(jnp.promote_types(x.dtype, jnp.float32)).mean(axis=(1, 2))
    logits = features @ params["head"]["kernel"] + params["head"]["bias"]
    return logits, new_stats
