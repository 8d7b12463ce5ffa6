r"""A PyTorch implementation of the ``full`` networks, timed like the JAX benchmarks.

The network is the one ``mcjax.models.Network(get_architecture(arch), num_classes,
connectivity="full")`` computes (docs/design.md §2): stem -> modules -> global mean pool -> dense,
where every module is ``y = ReLU(S(x) + sum_j F_j(x))`` over its C bottleneck blocks, each block
with its own BN after each of its three convolutions, and one shortcut per module. It has the
same parameters, counted the same way, so the two frameworks can be compared on one machine::

    python benchmarks/torch_reference.py --check          # needs jax + mcjax; exits 1 on mismatch
    python benchmarks/torch_reference.py --arch 20,4,8 --batch 128 --steps 5 --warmup 2
    python benchmarks/torch_reference.py --arch 20,4,8 29,8,8 --device cuda --dtype bfloat16 \
        --out benchmarks/torch_reference.json
    python benchmarks/torch_reference.py --arch resnext50_32x4d --image_size 224 --batch 64 \
        --device cuda --compile

A training step is forward, cross-entropy, backward and ``torch.optim.SGD`` (lr 0.1, momentum
0.9, weight decay 5e-4 on every parameter), the same update as ``mcjax.optim.weight_sgd``. One
first step is timed on its own (``first_step_s``; ``compile_s`` under ``--compile``), then
``--warmup`` steps run untimed, then ``--steps`` steps are timed one by one, each fully
synchronised, and the median is reported. Inference (``eval()``, no gradients) is timed the same
way. ``bfloat16`` runs under ``torch.autocast`` with float32 parameters, as mcjax's
``dtype=bfloat16`` keeps float32 parameters.

Only ``--check`` imports jax and mcjax; everything else needs PyTorch alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModuleSpec", "Network", "architecture", "benchmark", "build_model", "count_params"]

# mcjax.layers: running = 0.9 * running + 0.1 * batch; PyTorch's momentum is the other weight.
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5
_IMAGENET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEMS = ("cifar", "cifar_maxpool", "imagenet")


# --- Architectures (the same tables as mcjax.architectures, without importing jax) ------------


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """One module: ``cardinality`` bottlenecks ``in -> bottleneck -> bottleneck -> out``."""

    in_channels: int
    bottleneck: int
    out_channels: int
    stride: int
    cardinality: int

    @property
    def has_projection(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels


def _stages(
    stem_channels: int,
    per_stage: Sequence[int],
    widths: Sequence[int],
    outs: Sequence[int],
    strides: Sequence[int],
    cardinality: int,
) -> tuple[ModuleSpec, ...]:
    modules, channels = [], stem_channels
    for count, width, out, stride in zip(per_stage, widths, outs, strides, strict=True):
        for index in range(count):
            modules.append(
                ModuleSpec(channels, width, out, stride if index == 0 else 1, cardinality)
            )
            channels = out
    return tuple(modules)


def architecture(name: str, stem: str | None = None) -> tuple[str, int, tuple[ModuleSpec, ...]]:
    """``(stem, stem_channels, modules)`` of a ``"D,w,C"`` or ``"resnext{50,101,152}_{C}x{w}d"``.

    Mirrors ``mcjax.architectures.get_architecture``; ``--check`` compares the two.
    """
    text = str(name).replace(" ", "")
    match_cifar = re.fullmatch(r"\{?(\d+),(\d+),(\d+)\}?", text)
    match_imagenet = re.fullmatch(r"resnext(\d+)_(\d+)x(\d+)d", text)
    if match_cifar:
        depth, width, cardinality = (int(g) for g in match_cifar.groups())
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ValueError(f"{name!r}: D must be 2 + 3L with L a positive multiple of 3")
        per_stage = (depth - 2) // 9
        # Table 5: the w >= 64 networks have a 64-filter stem and outputs 4w, 8w, 16w.
        if width >= 64:
            stem_channels, outs = 64, (4 * width, 8 * width, 16 * width)
        else:
            stem_channels, outs = 16, (64, 128, 256)
        modules = _stages(
            stem_channels,
            (per_stage,) * 3,
            (width, 2 * width, 4 * width),
            outs,
            (1, 2, 2),
            cardinality,
        )
        default_stem = "cifar"
    elif match_imagenet:
        layers, cardinality, width = (int(g) for g in match_imagenet.groups())
        if layers not in _IMAGENET_STAGES:
            raise ValueError(f"{name!r}: ResNeXt depth must be one of {sorted(_IMAGENET_STAGES)}")
        stem_channels = 64
        modules = _stages(
            stem_channels,
            _IMAGENET_STAGES[layers],
            (width, 2 * width, 4 * width, 8 * width),
            (256, 512, 1024, 2048),
            (1, 2, 2, 2),
            cardinality,
        )
        default_stem = "imagenet"
    else:
        raise ValueError(f"unknown architecture {name!r}: use 'D,w,C' or 'resnext50_32x4d'")
    stem = default_stem if stem is None else stem
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    return stem, stem_channels, modules


# --- The network ---------------------------------------------------------------------------


def _he_normal_(weight: torch.Tensor, branch_out: int) -> None:
    # mcjax.layers.he_normal: fan-out of ONE branch (kh * kw * c_out of that branch). PyTorch's
    # kaiming_normal_ on a grouped weight would use all C branches' outputs, C times too small.
    kh, kw = weight.shape[-2:]
    with torch.no_grad():
        weight.normal_(0.0, (2.0 / (kh * kw * branch_out)) ** 0.5)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class FullModule(nn.Module):
    """``y = ReLU(S(x) + sum_j F_j(x))`` with the C branches as one wide/grouped stream.

    Channels are branch-major (channel ``j * c + k`` is channel ``k`` of branch ``j``), so
    ``BatchNorm2d(C * c)`` is exactly C per-branch BNs of ``c`` channels each.
    """

    def __init__(self, spec: ModuleSpec, *, zero_init_residual: bool) -> None:
        super().__init__()
        c, b, c_in, c_out = spec.cardinality, spec.bottleneck, spec.in_channels, spec.out_channels
        self.cardinality, self.out_channels = c, c_out
        # Every branch reads the same x, so their first 1x1 convs are one dense conv.
        self.conv1 = nn.Conv2d(c_in, c * b, 1, bias=False)
        self.bn1 = _bn(c * b)
        # Symmetric (k - 1) // 2 padding and the stride in the 3x3, as mcjax.layers.conv2d.
        self.conv2 = nn.Conv2d(c * b, c * b, 3, stride=spec.stride, padding=1, groups=c, bias=False)
        self.bn2 = _bn(c * b)
        # Each branch's last 1x1 conv gets its own outputs: the per-branch BN comes before the
        # sum, so the C convs cannot be folded into one b*C -> c_out conv while training.
        self.conv3 = nn.Conv2d(c * b, c * c_out, 1, groups=c, bias=False)
        self.bn3 = _bn(c * c_out)
        for conv, branch_out in ((self.conv1, b), (self.conv2, b), (self.conv3, c_out)):
            _he_normal_(conv.weight, branch_out)
        if zero_init_residual:
            nn.init.zeros_(self.bn3.weight)
        self.shortcut: nn.Module = nn.Identity()
        if spec.has_projection:
            # One projection per module, shared by its C blocks (docs/design.md §1).
            conv = nn.Conv2d(c_in, c_out, 1, stride=spec.stride, bias=False)
            _he_normal_(conv.weight, c_out)
            self.shortcut = nn.Sequential(conv, _bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        # [N, C * c_out, H, W] -> [N, C, c_out, H, W] -> sum over the branches. A view also in
        # channels_last, where the channel axis is the innermost one. In `full` mode mcjax sums
        # (its `aggregation` setting only concerns the masked modes).
        f = h.unflatten(1, (self.cardinality, self.out_channels)).sum(dim=1)
        return F.relu(self.shortcut(x) + f)


class Network(nn.Module):
    """stem -> modules -> global average pool -> dense (``mcjax.models`` with ``full``)."""

    def __init__(
        self,
        stem: str,
        stem_channels: int,
        modules: Sequence[ModuleSpec],
        num_classes: int,
        *,
        in_channels: int = 3,
        image_size: int = 32,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        kernel = 7 if stem == "imagenet" else 3
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels,
                stem_channels,
                kernel,
                stride=2 if stem == "imagenet" else 1,
                padding=(kernel - 1) // 2,
                bias=False,
            ),
            _bn(stem_channels),
            nn.ReLU(inplace=True),
        )
        _he_normal_(self.stem[0].weight, stem_channels)
        if stem in ("imagenet", "cifar_maxpool"):
            # Pads with -inf, as mcjax.layers.max_pool.
            self.stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential(
            *(FullModule(s, zero_init_residual=zero_init_residual) for s in modules)
        )
        self.head = nn.Linear(modules[-1].out_channels, num_classes)
        # mcjax zero-initialises the head: uniform logits at init.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(images))
        # mcjax pools and applies the head in float32 whatever the compute dtype.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float().mean(dim=(2, 3)))


def build_model(
    arch: str,
    num_classes: int,
    image_size: int,
    *,
    stem: str | None = None,
    in_channels: int = 3,
    zero_init_residual: bool = True,
) -> Network:
    """The ``full`` network named ``arch`` (see :func:`architecture`).

    ``zero_init_residual`` defaults to True because the shipped configs turn it on for ``full``
    (``mcjax/training/defaults.py``: ``"auto"``); it changes the initial values only.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    stem_kind, stem_channels, modules = architecture(arch, stem)
    return Network(
        stem_kind,
        stem_channels,
        modules,
        num_classes,
        in_channels=in_channels,
        image_size=image_size,
        zero_init_residual=zero_init_residual,
    )


def count_params(model: nn.Module) -> int:
    """Trainable scalars: conv and dense weights, dense biases, BN scale and bias.

    BN running statistics are buffers, not parameters, so they are left out, as in
    ``mcjax.costs.count_params``.
    """
    return sum(p.numel() for p in model.parameters())


def default_num_classes(arch: str) -> int:
    return 1000 if arch.startswith("resnext") else 100


# --- Timing --------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # Process-wide and never reset: with several archs in one run, the largest so far.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return maxrss / scale, "process max RSS"


def benchmark(
    arch: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int,
    device: str,
    dtype: str,
    channels_last: bool,
    compile: bool = False,
    num_classes: int | None = None,
    stem: str | None = None,
) -> dict:
    """Times training and inference steps of ``arch``; returns one result row.

    Steps: one first step (timed alone: ``first_step_s``, ``compile_s`` under ``compile``),
    ``warmup`` untimed steps, ``steps`` timed steps (median reported). Training and inference
    are timed the same way.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if steps < 1 or warmup < 0 or batch < 1:
        raise ValueError("need steps >= 1, warmup >= 0, batch >= 1")
    dev = torch.device(device)
    num_classes = default_num_classes(arch) if num_classes is None else num_classes
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch, num_classes, image_size, stem=stem).to(
        dev, memory_format=memory_format
    )
    params = count_params(model)
    images = torch.randn(batch, 3, image_size, image_size, device=dev).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, num_classes, (batch,), device=dev)
    # Same update as mcjax.optim.weight_sgd: decay added to the gradient before momentum, on
    # every parameter (BN scale/bias included, as config.decay_norm_and_bias=True).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False
    )
    forward = torch.compile(model) if compile else model

    def autocast() -> contextlib.AbstractContextManager:
        if dtype == "bfloat16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses: list[torch.Tensor] = []

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    def infer_step() -> None:
        with torch.no_grad(), autocast():
            forward(images)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model.train()
    first_step_s = _timed(train_step, dev)
    for _ in range(warmup):
        train_step()
    train_times = [_timed(train_step, dev) for _ in range(steps)]
    peak_mib, peak_kind = _peak_memory_mib(dev)

    model.eval()
    infer_first_s = _timed(infer_step, dev)
    for _ in range(warmup):
        infer_step()
    infer_times = [_timed(infer_step, dev) for _ in range(steps)]

    train_median = statistics.median(train_times)
    infer_median = statistics.median(infer_times)
    return {
        "arch": arch,
        "stem": architecture(arch, stem)[0],
        "framework": "torch",
        "connectivity": "full",
        "device": str(dev),
        "dtype": dtype,
        "batch": batch,
        "image_size": image_size,
        "num_classes": num_classes,
        "channels_last": channels_last,
        "compile": compile,
        "params": params,
        "steps": steps,
        "warmup": warmup,
        "train_images_per_s": batch / train_median,
        "step_ms": 1000 * train_median,
        "step_ms_all": [1000 * t for t in train_times],
        "first_step_s": first_step_s,
        "compile_s": first_step_s if compile else None,
        "infer_images_per_s": batch / infer_median,
        "infer_ms": 1000 * infer_median,
        "infer_first_s": infer_first_s,
        "peak_memory_mib": peak_mib,
        "peak_memory_kind": peak_kind,
        "final_loss": float(losses[-1]),
    }


def machine_record(device: str) -> dict:
    record = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": None,
    }
    if torch.cuda.is_available():
        record["cuda_device"] = torch.cuda.get_device_name(torch.device(device).index or 0)
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    return record


# --- Check against mcjax -------------------------------------------------------------------


def _load_mcjax_params(model: Network, params: dict, batch_stats: dict) -> None:
    """Copies mcjax variables (HWIO kernels, branch-stacked) into ``model``."""
    import numpy as np

    def conv(kernel) -> torch.Tensor:  # [kh, kw, in, out] -> [out, in, kh, kw]
        return torch.from_numpy(
            np.ascontiguousarray(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))
        )

    def branch_conv(kernel) -> torch.Tensor:  # [C, kh, kw, in, out] -> [C * out, in, kh, kw]
        k = np.transpose(np.asarray(kernel), (0, 4, 3, 1, 2))
        return torch.from_numpy(np.ascontiguousarray(k.reshape(-1, *k.shape[2:])))

    def bn(module: nn.BatchNorm2d, p: dict, s: dict) -> None:
        module.weight.copy_(torch.from_numpy(np.array(p["scale"]).reshape(-1)))
        module.bias.copy_(torch.from_numpy(np.array(p["bias"]).reshape(-1)))
        module.running_mean.copy_(torch.from_numpy(np.array(s["mean"]).reshape(-1)))
        module.running_var.copy_(torch.from_numpy(np.array(s["var"]).reshape(-1)))

    with torch.no_grad():
        model.stem[0].weight.copy_(conv(params["stem"]["conv"]))
        bn(model.stem[1], params["stem"]["bn"], batch_stats["stem"]["bn"])
        for module, p, s in zip(model.body, params["modules"], batch_stats["modules"], strict=True):
            for index in (1, 2, 3):
                getattr(module, f"conv{index}").weight.copy_(branch_conv(p[f"conv{index}"]))
                bn(getattr(module, f"bn{index}"), p[f"bn{index}"], s[f"bn{index}"])
            if "shortcut" in p:
                module.shortcut[0].weight.copy_(conv(p["shortcut"]["conv"]))
                bn(module.shortcut[1], p["shortcut"]["bn"], s["shortcut"]["bn"])
        model.head.weight.copy_(torch.from_numpy(np.array(params["head"]["kernel"]).T.copy()))
        model.head.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))


def check(archs: Sequence[tuple[str, int]], *, forward_arch: str = "20,4,8") -> bool:
    """Compares structure and parameter counts with mcjax, and logits on one small network."""
    import jax
    import numpy as np

    from mcjax import costs, models
    from mcjax.architectures import get_architecture

    ok = True
    print("| arch | classes | torch params | mcjax params | mcjax costs | match |")
    print("|---|---|---|---|---|---|")
    for arch, num_classes in archs:
        jarch = get_architecture(arch)
        net = models.Network(jarch, num_classes=num_classes, connectivity="full")
        # eval_shape: the count needs shapes only, not a 25M-parameter initialisation.
        shapes = jax.eval_shape(lambda net=net: models.init(jax.random.key(0), net))
        jax_params = costs.count_params(shapes["params"])
        table_params = costs.network_costs(
            jarch, image_size=32, num_classes=num_classes, per_block_inputs=False
        )["params"]
        torch_params = count_params(build_model(arch, num_classes, 32))
        stem, stem_channels, modules = architecture(arch)
        same_structure = (stem, stem_channels) == (jarch.stem, jarch.stem_channels) and [
            dataclasses.astuple(m) for m in modules
        ] == [dataclasses.astuple(m) for m in jarch.modules]
        match = torch_params == jax_params == table_params and same_structure
        ok &= match
        print(
            f"| {arch} | {num_classes} | {torch_params:,} | {jax_params:,} | {table_params:,} "
            f"| {'yes' if match else 'NO'} |"
        )

    # Same function: mcjax's variables (random head and BN affine, so nothing is trivially zero)
    # copied into the torch model must give the same logits, in training and evaluation mode.
    net = models.Network(get_architecture(forward_arch), num_classes=10, connectivity="full")
    variables = models.init(jax.random.key(0), net)
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)
    ]
    params = jax.tree.unflatten(treedef, leaves)
    images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    model = build_model(forward_arch, 10, 32)
    _load_mcjax_params(model, params, variables["batch_stats"])
    torch_images = torch.from_numpy(np.array(images).transpose(0, 3, 1, 2).copy())
    # Evaluation first: a training-mode forward updates the torch model's running statistics.
    for train in (False, True):
        expected, _ = models.apply(
            net, params, variables["batch_stats"], images, connectivity=None, train=train
        )
        model.train(train)
        with torch.no_grad():
            got = model(torch_images.contiguous(memory_format=torch.channels_last)).numpy()
        expected = np.asarray(expected)
        error = float(np.max(np.abs(got - expected)) / (np.max(np.abs(expected)) + 1e-12))
        close = error < 1e-4
        ok &= close
        mode = "train" if train else "eval"
        print(f"{forward_arch} logits, {mode} mode: max relative difference {error:.2e}", end="")
        print("" if close else "  MISMATCH")
    return ok


# --- Command line --------------------------------------------------------------------------


def _markdown(rows: Sequence[dict]) -> str:
    compiled = any(r["compile"] for r in rows)
    header = "| arch | dtype | batch | train img/s | step ms | infer img/s | peak MiB |"
    rule = "|---|---|---|---|---|---|---|"
    if compiled:
        header += " compile s |"
        rule += "---|"
    lines = [header, rule]
    for r in rows:
        line = (
            f"| {r['arch']} | {r['dtype']} | {r['batch']} | {r['train_images_per_s']:,.1f} "
            f"| {r['step_ms']:,.1f} | {r['infer_images_per_s']:,.1f} "
            f"| {r['peak_memory_mib']:,.0f} |"
        )
        if compiled:
            line += f" {r['compile_s']:.1f} |" if r["compile"] else " - |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", action="extend", help="one or more architectures")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None, help="32, or 224 for resnext")
    parser.add_argument("--num_classes", type=int, default=None, help="100, or 1000 for resnext")
    parser.add_argument("--stem", default=None, choices=STEMS, help="override the default stem")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True, help="NHWC"
    )
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 for float32 matmuls/convs on CUDA (XLA's default precision on GPU uses it)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--out", default=None, help="write the rows and machine record as JSON")
    parser.add_argument("--check", action="store_true", help="compare with mcjax, then exit")
    args = parser.parse_args(argv)

    if args.check:
        ok = check([("20,4,8", 100), ("29,8,8", 100), ("29,64,8", 100), ("resnext50_32x4d", 1000)])
        print("check passed" if ok else "check FAILED")
        return 0 if ok else 1

    if torch.device(args.device).type == "cuda":
        # XLA autotunes convolution algorithms when it compiles; this is eager PyTorch's
        # equivalent, paid in the first step.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    rows = []
    for arch in args.arch or ["20,4,8"]:
        image_size = args.image_size or (224 if arch.startswith("resnext") else 32)
        row = benchmark(
            arch,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            image_size=image_size,
            device=args.device,
            dtype=args.dtype,
            channels_last=args.channels_last,
            compile=args.compile,
            num_classes=args.num_classes,
            stem=args.stem,
        )
        row["tf32"] = args.tf32 if row["device"].startswith("cuda") else None
        rows.append(row)
        print(
            f"  {arch}: {row['train_images_per_s']:.1f} img/s train, "
            f"{row['infer_images_per_s']:.1f} img/s infer, first step {row['first_step_s']:.1f} s",
            flush=True,
        )
    machine = machine_record(args.device)
    print(
        f"\ntorch {machine['torch']}, {args.device}"
        + (f" ({machine['cuda_device']})" if machine["cuda_device"] else "")
        + f", {machine['cpu_count']} CPUs, {machine['torch_threads']} threads; "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(_markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
