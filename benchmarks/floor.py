r"""The floor of a train step: the bytes it must move and the FLOPs it must do.

    python benchmarks/floor.py --arch 29,8,8 --batch 32          # the counts, no timing

A train step (forward, backward, SGD update) of a network is written here as the list of
the layers that define it, each with the tensors it reads and writes, counted **one pass per
layer** (the accounting of an eager framework whose every layer is one kernel; nothing is
counted twice, nothing is assumed fused across layers except a ReLU or a residual add into
the BN before it):

* a convolution or matrix product reads its input and writes its output; backward, the
  input gradient reads the output gradient and writes the input gradient, the weight
  gradient reads the input and the output gradient;
* a training-mode BN reads its input once for its statistics and once to normalise, and
  writes its output (with the ReLU, and the residual add that follows it, fused: the add
  reads the shortcut); backward, one reduction pass (gradient, input, output for the ReLU
  mask) and one elementwise pass that also reads them and writes the input gradient;
* MaskConnect's mix ``x_j = sum_k m[j,k] y_k`` reads the C outputs of the module before and
  writes the C inputs; backward, the input gradient of the C outputs reads the C input
  gradients and writes C output gradients, and the mask gradient ``<g_j, y_k>`` reads both;
* a gradient that two paths produce (a block input read by its convolution and by the
  shortcut) is summed in the pass that writes the second one (one more read);
* the update reads the parameters, their gradients and the momentum, and writes the
  parameters and the momentum.

FLOPs are those of :mod:`mcjax.costs` (2 x multiply-adds of the convolutions and the head),
times 3 for forward + backward. The floor time of a step is its bytes at the machine's
measured bandwidth into reused buffers plus its FLOPs at the machine's measured matmul rate
(:func:`floor_ms`): the time of an implementation that moves nothing it need not move and runs
every product at the rate of a large matrix product, one after the other. A mode's distance to
its floor is its measured step time over that.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mcjax import costs
from mcjax.architectures import get_architecture

BYTES = 4  # float32 activations


@dataclasses.dataclass
class Traffic:
    """Elements read and written, per part of the step."""

    parts: dict = dataclasses.field(default_factory=dict)

    def add(self, part: str, reads: float = 0, writes: float = 0) -> None:
        r, w = self.parts.get(part, (0, 0))
        self.parts[part] = (r + reads, w + writes)

    @property
    def elements(self) -> float:
        return sum(r + w for r, w in self.parts.values())


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


def _conv(t: Traffic, part: str, x: float, y: float, *, input_grad: bool = True) -> None:
    t.add(f"{part} forward", reads=x, writes=y)
    if input_grad:
        t.add(f"{part} backward", reads=y, writes=x)
    t.add(f"{part} weight gradient", reads=x + y)


def _bn(t: Traffic, part: str, x: float, *, extra_reads: float = 0) -> None:
    """BN (+ ReLU, + the residual add reading ``extra_reads``) forward and backward."""
    t.add(f"{part} forward", reads=2 * x + extra_reads, writes=x)
    # Backward: a reduction pass (grad, input, output) and an elementwise pass (the same
    # three, writing the input gradient).
    t.add(f"{part} backward", reads=6 * x, writes=x)


def step_traffic(arch_name: str, mode: str, *, batch: int, image_size: int = 32) -> Traffic:
    """The elements one train step of ``mode`` (``full``, ``learned``, ``random``, ``real``,
    or ``full_per_branch_bn``) reads and writes, by part (see the module docstring)."""
    arch = get_architecture(arch_name)
    masked = mode not in ("full", "full_per_branch_bn")
    t = Traffic()
    n = batch
    size = image_size // (2 if arch.stem == "imagenet" else 1)
    stem = n * size * size * arch.stem_channels
    _conv(t, "convolutions", n * image_size * image_size * 3, stem, input_grad=False)
    _bn(t, "BN, ReLU, residual", stem)
    if arch.stem in ("imagenet", "cifar_maxpool"):
        pooled = stem / 4
        t.add("other", reads=stem + pooled, writes=pooled + stem)
        stem, size = pooled, size // 2
    for index, spec in enumerate(arch.modules):
        c, b = spec.cardinality, spec.bottleneck
        out = _out(size, spec.stride)
        streams = c if masked else 1
        shared = index == 0 or not masked
        x_in = n * size * size * spec.in_channels * (1 if shared else c)
        y_out = n * out * out * spec.out_channels * streams
        h1 = n * size * size * c * b
        h2 = n * out * out * c * b
        if masked and index > 0:
            # The mix: C outputs of module i-1 in, C inputs out; backward its two products.
            t.add("mask aggregation", reads=x_in, writes=x_in)
            t.add("mask aggregation", reads=x_in, writes=x_in)  # input gradient of the outputs
            t.add("mask aggregation", reads=2 * x_in)  # mask gradient
        _conv(t, "convolutions", x_in, h1)
        _bn(t, "BN, ReLU, residual", h1)
        _conv(t, "convolutions", h1, h2)
        _bn(t, "BN, ReLU, residual", h2)
        per_branch_out = masked or mode == "full_per_branch_bn"
        f = y_out if masked else n * out * out * spec.out_channels * (c if per_branch_out else 1)
        _conv(t, "convolutions", h2, f)
        if mode == "full_per_branch_bn":
            # C BNs, then their sum into the one stream.
            _bn(t, "BN, ReLU, residual", f)
            t.add("BN, ReLU, residual", reads=f, writes=y_out)
        shortcut = y_out
        if spec.has_projection:
            x_strided = x_in / (spec.stride * spec.stride)
            _conv(t, "projection shortcut", x_strided, shortcut)
            _bn(t, "projection shortcut", shortcut)
        _bn(t, "BN, ReLU, residual", y_out, extra_reads=shortcut)
        # The block input's gradient: its convolution's and the shortcut's, summed.
        t.add("BN, ReLU, residual", reads=x_in)
        size = out
    final = n * size * size * arch.out_channels * (arch.modules[-1].cardinality if masked else 1)
    t.add("other", reads=2 * final)  # the head's mean (and the sum of the C outputs), backward
    net_params = costs.network_costs(
        arch, image_size=image_size, num_classes=100, per_block_inputs=masked
    )["params"]
    t.add("optimizer update", reads=3 * net_params, writes=2 * net_params)
    return t


def step_flops(arch_name: str, mode: str, *, batch: int, image_size: int = 32, num_classes=100):
    """Forward + backward FLOPs of one train step (3 x the forward FLOPs of mcjax.costs)."""
    masked = mode not in ("full", "full_per_branch_bn")
    forward = costs.network_costs(
        get_architecture(arch_name),
        image_size=image_size,
        num_classes=num_classes,
        per_block_inputs=masked,
        per_branch_bn=masked or mode == "full_per_branch_bn",
    )["flops_per_image"]
    return 3 * forward * batch


def floor_ms(bytes_moved: float, flops: float, *, bandwidth_gbs: float, matmul_gflops: float):
    """``bytes / bandwidth + flops / matmul rate``, in milliseconds."""
    return 1e3 * (bytes_moved / (bandwidth_gbs * 1e9) + flops / (matmul_gflops * 1e9))


def table(arch: str, modes, *, batch: int, image_size: int = 32) -> list[dict]:
    rows = []
    for mode in modes:
        traffic = step_traffic(arch, mode, batch=batch, image_size=image_size)
        rows.append(
            {
                "arch": arch,
                "mode": mode,
                "batch": batch,
                "bytes": BYTES * traffic.elements,
                "bytes_by_part": {k: BYTES * (r + w) for k, (r, w) in traffic.parts.items()},
                "flops": step_flops(arch, mode, batch=batch, image_size=image_size),
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["20,4,8", "29,8,8", "29,64,8"])
    parser.add_argument("--modes", nargs="+", default=["full", "learned", "random"])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    print("| arch | mode | batch | GB read + written | GFLOP | bytes vs full | FLOPs vs full |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.arch:
        rows = table(arch, args.modes, batch=args.batch)
        full = next((r for r in rows if r["mode"] == "full"), rows[0])
        for r in rows:
            print(
                f"| {arch} | {r['mode']} | {r['batch']} | {r['bytes'] / 1e9:.2f} "
                f"| {r['flops'] / 1e9:.1f} | {r['bytes'] / full['bytes']:.2f} "
                f"| {r['flops'] / full['flops']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
