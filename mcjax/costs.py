"""Parameter and FLOP counts, per module and in total (as the paper's Table 1).

Conventions:

* parameters: convolution and dense weights, dense biases, and BN scale and
  bias; not BN running statistics, not the real-valued masks;
* FLOPs: ``2 x`` multiply-accumulates of convolutions and the dense head, per
  image, forward pass (the convention of ``20,4,8 = 0.081 GFLOP``); mask
  aggregation, BN, ReLU and pooling are not counted.

In the per-block-input modes (``learned``, ``random``, ``real``) a module's
shared projection runs once per block input (C times, except in module 1 whose
blocks share the stem's output); in ``full`` once per module. Those modes keep
one BN per block after its last 1x1 conv (``C * c_out`` scales and biases per
module); ``full`` is ResNeXt, with one BN after the sum (``c_out``), unless it
is the per-branch-BN ablation (``per_branch_bn=True``). The paper's
Params-Train figures (0.28M for ``20,4,8``, 0.86M for ``29,8,8``) count
per-branch BNs; ResNeXt's form of those networks has 0.27M and 0.84M.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mcjax.architectures import Architecture, ModuleSpec

__all__ = ["ModuleCost", "count_params", "module_costs", "network_costs"]


@dataclasses.dataclass(frozen=True)
class ModuleCost:
    """Cost of one module (or of the stem/head, with ``branches = 0``)."""

    name: str
    branches: int
    in_channels: int
    bottleneck: int
    out_channels: int
    stride: int  # the part's reduction of the resolution (ImageNet stem: 2 x 2 = 4)
    resolution: int  # output height (= width) of this part
    params: int
    flops: int


def _out_size(size: int, stride: int) -> int:
    # Symmetric (k - 1) // 2 padding: ceil(size / stride).
    return -(-size // stride)


def module_costs(
    arch: Architecture,
    *,
    image_size: int,
    in_channels: int = 3,
    num_classes: int,
    per_block_inputs: bool = True,
    per_branch_bn: bool | None = None,
) -> list[ModuleCost]:
    """Per-part costs: stem, every module, head.

    Args:
      arch: the architecture (pruned ones have fewer branches in some modules).
      image_size: input height = width.
      in_channels: channels of the input images.
      num_classes: outputs of the head.
      per_block_inputs: True for the masked modes, False for ``full``.
      per_branch_bn: one BN per block after its last 1x1 conv (True) or one per
        module after the sum (False); default ``per_block_inputs`` (the masked
        modes have per-branch BNs; ``full`` is ResNeXt). See
        :attr:`mcjax.models.Network.per_branch_bn3`.
    """
    if per_branch_bn is None:
        per_branch_bn = per_block_inputs
    rows = []
    kernel = 7 if arch.stem == "imagenet" else 3
    conv_stride = 2 if arch.stem == "imagenet" else 1
    size = _out_size(image_size, conv_stride)
    stem_params = kernel * kernel * in_channels * arch.stem_channels + 2 * arch.stem_channels
    stem_macs = size * size * kernel * kernel * in_channels * arch.stem_channels
    pool_stride = 2 if arch.stem in ("imagenet", "cifar_maxpool") else 1
    size = _out_size(size, pool_stride)
    stem_stride = conv_stride * pool_stride  # the stem's whole reduction of the resolution
    rows.append(
        ModuleCost(
            "stem",
            0,
            in_channels,
            0,
            arch.stem_channels,
            stem_stride,
            size,
            stem_params,
            2 * stem_macs,
        )
    )
    for index, spec in enumerate(arch.modules):
        out = _out_size(size, spec.stride)
        params, macs = _module(
            spec,
            size,
            out,
            shared_input=index == 0 or not per_block_inputs,
            per_branch_bn=per_branch_bn,
        )
        rows.append(
            ModuleCost(
                f"module {index + 1}",
                spec.cardinality,
                spec.in_channels,
                spec.bottleneck,
                spec.out_channels,
                spec.stride,
                out,
                params,
                2 * macs,
            )
        )
        size = out
    head_params = arch.out_channels * num_classes + num_classes
    rows.append(
        ModuleCost(
            "head",
            0,
            arch.out_channels,
            0,
            num_classes,
            1,
            1,
            head_params,
            2 * arch.out_channels * num_classes,
        )
    )
    return rows


def _module(
    spec: ModuleSpec, size: int, out: int, *, shared_input: bool, per_branch_bn: bool
) -> tuple[int, int]:
    c, cin, b, cout = spec.cardinality, spec.in_channels, spec.bottleneck, spec.out_channels
    block_params = cin * b + 9 * b * b + b * cout + 2 * (b + b)
    block_macs = size * size * cin * b + out * out * (9 * b * b + b * cout)
    params, macs = c * block_params, c * block_macs
    params += 2 * cout * (c if per_branch_bn else 1)
    if spec.has_projection:
        params += cin * cout + 2 * cout
        macs += (1 if shared_input else c) * out * out * cin * cout
    return params, macs


def network_costs(
    arch: Architecture,
    *,
    image_size: int,
    in_channels: int = 3,
    num_classes: int,
    per_block_inputs: bool = True,
    per_branch_bn: bool | None = None,
) -> dict:
    """Totals: ``{"params": int, "flops_per_image": int}`` (arguments as :func:`module_costs`)."""
    rows = module_costs(
        arch,
        image_size=image_size,
        in_channels=in_channels,
        num_classes=num_classes,
        per_block_inputs=per_block_inputs,
        per_branch_bn=per_branch_bn,
    )
    return {
        "params": int(sum(r.params for r in rows)),
        "flops_per_image": int(sum(r.flops for r in rows)),
    }


def count_params(params) -> int:
    """Number of scalars in a parameter tree, leaving out ``params["masks"]``."""
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k != "masks"}
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))
