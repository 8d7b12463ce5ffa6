r"""PyTorch baselines for mcjax: ResNeXt in its public form, ported weights, and their timing.

The CIFAR networks ``"D,w,C"`` are the standard public CIFAR ResNeXt (Xie et al. 2017, and the
PyTorch ports users run), built with mcjax's widths and stem (``mcjax.architectures``)::

    stem:   conv3x3 -> BN -> ReLU                 (conv7x7/2 -> BN -> ReLU -> maxpool3x3/2 for
                                                   the ImageNet names)
    module: y = ReLU(S(x) + BN3(conv1x1_expand(ReLU(BN2(gconv3x3(ReLU(BN1(conv1x1_reduce(x)))))))))
            conv1x1_reduce: c_in -> C*b (dense), gconv3x3: C*b -> C*b with groups=C (the stride
            here), conv1x1_expand: C*b -> c_out (dense), ONE BN3 over c_out;
            S = identity, or conv1x1 (stride) + BN when the shape changes
    head:   global average pool -> dense

Module and parameter names follow ``torchvision.models.ResNet`` (``conv1``, ``bn1``,
``layer{i}.{j}.conv1..bn3``, ``downsample``, ``fc``), so for ``"resnext50_32x4d"`` this network
and ``torchvision.models.resnext50_32x4d`` share one state_dict (``--check`` loads one into the
other and compares logits). The timed ImageNet-shape baseline is torchvision's model itself.

Equivalently, per branch ``j = 1..C`` (what :func:`ResNeXt` computes with
``formulation="per_branch"``): ``h_j = ReLU(BN2_j(conv3x3_j(ReLU(BN1_j(conv1x1_j(x))))))`` and
``y = ReLU(S(x) + BN3(sum_j conv1x1_expand_j(h_j)))``. That is the layout of mcjax's ``full``
parameters (``conv1 [C,1,1,c_in,b]``, ``conv2 [C,3,3,b,b]``, ``bn1``/``bn2`` ``[C,b]``,
``conv3 [C,1,1,b,c_out]``, ``bn3 [c_out]``), which :func:`port_mcjax_full` maps onto this
network (channels branch-major: channel ``j*b + k`` is channel ``k`` of branch ``j``). The two
compute the same logits in eval mode and in train mode (batch statistics); their running
statistics differ slightly after a train step (PyTorch keeps the unbiased batch variance,
mcjax the biased one)::

    python benchmarks/torch_reference.py --check     # needs jax + mcjax; exits 1 on any mismatch
    python benchmarks/torch_reference.py --arch 29,8,8 --batch 32 --steps 5
    python benchmarks/torch_reference.py --arch resnext50_32x4d --device cuda --dtype bfloat16 \
        --batch 128 --out torch.json

Timing (:func:`benchmark`): PyTorch in its fastest ordinary setting on the machine. Every
setting in ``layouts x modes`` (``channels_last`` / ``contiguous`` memory, ``eager`` /
``torch.compile``; a setting that fails to compile is recorded, not fatal) is timed, and each of
training and inference reports its fastest setting. CPU threads: all the machine's cores
(``--threads``). A training step is forward, cross-entropy, backward and ``torch.optim.SGD``
(lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter; ``fused`` on CUDA), the update of
``mcjax.optim.weight_sgd``. One first step is timed alone (``train_first_s``: compilation under
``torch.compile``, cuDNN's algorithm search on CUDA), ``--warmup`` steps run untimed, then
``--steps`` steps are timed one by one, each synchronised, and the median is reported.
Inference (``eval()``, ``torch.inference_mode``) is timed the same way. ``bfloat16`` runs
under ``torch.autocast`` with float32 parameters, as mcjax's ``dtype=bfloat16``.

Only ``--check`` imports jax and mcjax; everything else needs PyTorch (and torchvision for the
ImageNet-shape baseline) alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TORCHVISION_PARAMS",
    "ModuleSpec",
    "ResNeXt",
    "architecture",
    "benchmark",
    "build_model",
    "count_params",
    "expected_params",
    "forward_flops",
    "port_mcjax_full",
]

# mcjax.layers: running = 0.9 * running + 0.1 * batch; PyTorch's momentum is the other weight.
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5
STEMS = ("cifar", "cifar_maxpool", "imagenet")
FORMULATIONS = ("grouped", "per_branch")
LAYOUTS = ("channels_last", "contiguous")
MODES = ("eager", "compile")
_IMAGENET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# The anchor of the ImageNet-shape baseline: torchvision's documented parameter count.
TORCHVISION_PARAMS = {"resnext50_32x4d": 25_028_904}


# --- Architectures (the tables of mcjax.architectures, without importing jax) -----------------


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


@dataclasses.dataclass(frozen=True)
class Arch:
    """``stem -> stages of modules -> head``; ``stages[i]`` becomes ``layer{i+1}``."""

    name: str
    stem: str
    stem_channels: int
    stages: tuple[tuple[ModuleSpec, ...], ...]

    @property
    def modules(self) -> tuple[ModuleSpec, ...]:
        return tuple(m for stage in self.stages for m in stage)

    @property
    def out_channels(self) -> int:
        return self.stages[-1][-1].out_channels


def _stages(stem_channels, per_stage, widths, outs, strides, cardinality):
    stages, channels = [], stem_channels
    for count, width, out, stride in zip(per_stage, widths, outs, strides, strict=True):
        stage = []
        for index in range(count):
            stage.append(ModuleSpec(channels, width, out, stride if index == 0 else 1, cardinality))
            channels = out
        stages.append(tuple(stage))
    return tuple(stages)


def architecture(name: str, stem: str | None = None) -> Arch:
    """The network named ``"D,w,C"`` or ``"resnext{50,101,152}_{C}x{w}d"``.

    Mirrors ``mcjax.architectures.get_architecture`` (``--check`` compares the two): CIFAR
    networks have three stages of ``(D - 2) / 9`` modules with bottleneck widths ``w, 2w, 4w``
    per branch and outputs 64/128/256 after a 16-filter stem, or ``4w, 8w, 16w`` after a
    64-filter stem when ``w >= 64`` (so ``"29,64,8"`` is ResNeXt-29 8x64d).
    """
    text = str(name).replace(" ", "")
    match_cifar = re.fullmatch(r"\{?(\d+),(\d+),(\d+)\}?", text)
    match_imagenet = re.fullmatch(r"resnext(\d+)_(\d+)x(\d+)d", text)
    if match_cifar:
        depth, width, cardinality = (int(g) for g in match_cifar.groups())
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ValueError(f"{name!r}: D must be 2 + 3L with L a positive multiple of 3")
        per_stage = (depth - 2) // 9
        if width >= 64:
            stem_channels, outs = 64, (4 * width, 8 * width, 16 * width)
        else:
            stem_channels, outs = 16, (64, 128, 256)
        stages = _stages(
            stem_channels, (per_stage,) * 3, (width, 2 * width, 4 * width), outs, (1, 2, 2),
            cardinality,
        )  # fmt: skip
        default_stem = "cifar"
    elif match_imagenet:
        layers, cardinality, width = (int(g) for g in match_imagenet.groups())
        if layers not in _IMAGENET_STAGES:
            raise ValueError(f"{name!r}: ResNeXt depth must be one of {sorted(_IMAGENET_STAGES)}")
        stem_channels = 64
        stages = _stages(
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
    return Arch(text, stem, stem_channels, stages)


def default_num_classes(arch: str) -> int:
    return 1000 if arch.startswith("resnext") else 100


def default_image_size(arch: str) -> int:
    return 224 if arch.startswith("resnext") else 32


# --- Costs, counted from the architecture by hand ----------------------------------------------


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)  # symmetric (k - 1) // 2 padding


def expected_params(arch: str, num_classes: int, *, in_channels: int = 3) -> int:
    """Trainable scalars of the public form: conv and dense weights, dense bias, BN affine.

    Per module: ``c_in*C*b + 9*C*b*b + C*b*c_out`` conv weights, ``2*(C*b + C*b + c_out)`` BN
    scale/bias (one BN3), ``c_in*c_out + 2*c_out`` for a projection.
    """
    a = architecture(arch)
    kernel = 7 if a.stem == "imagenet" else 3
    total = kernel * kernel * in_channels * a.stem_channels + 2 * a.stem_channels
    for m in a.modules:
        width = m.cardinality * m.bottleneck
        total += m.in_channels * width + 9 * width * m.bottleneck + width * m.out_channels
        total += 2 * (width + width + m.out_channels)
        if m.has_projection:
            total += m.in_channels * m.out_channels + 2 * m.out_channels
    return total + a.out_channels * num_classes + num_classes


def forward_flops(arch: str, *, image_size: int, num_classes: int, in_channels: int = 3) -> int:
    """Forward FLOPs per image: 2 x multiply-accumulates of the convolutions and the dense head
    (the convention of ``mcjax.costs``; BN, ReLU, pooling and the sums are not counted)."""
    a = architecture(arch)
    kernel = 7 if a.stem == "imagenet" else 3
    size = _out_size(image_size, 2 if a.stem == "imagenet" else 1)
    macs = size * size * kernel * kernel * in_channels * a.stem_channels
    if a.stem in ("imagenet", "cifar_maxpool"):
        size = _out_size(size, 2)
    for m in a.modules:
        out = _out_size(size, m.stride)
        width = m.cardinality * m.bottleneck
        macs += size * size * m.in_channels * width
        macs += out * out * (9 * width * m.bottleneck + width * m.out_channels)
        if m.has_projection:
            macs += out * out * m.in_channels * m.out_channels
        size = out
    macs += a.out_channels * num_classes
    return 2 * macs


# --- The network -------------------------------------------------------------------------------


def _he_normal_(weight: torch.Tensor, branch_out: int) -> None:
    # mcjax.layers.he_normal: fan-out of one branch (kh * kw * outputs of that branch). PyTorch's
    # kaiming_normal_ on a grouped weight would count all C branches' outputs.
    kh, kw = weight.shape[-2:]
    with torch.no_grad():
        weight.normal_(0.0, (2.0 / (kh * kw * branch_out)) ** 0.5)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class Bottleneck(nn.Module):
    """One ResNeXt module in its public (grouped) form, torchvision's names and layout."""

    def __init__(self, spec: ModuleSpec, *, formulation: str = "grouped") -> None:
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
        c, b = spec.cardinality, spec.bottleneck
        width = c * b
        self.cardinality, self.bottleneck, self.stride = c, b, spec.stride
        self.formulation = formulation
        self.conv1 = nn.Conv2d(spec.in_channels, width, 1, bias=False)
        self.bn1 = _bn(width)
        # Symmetric (k - 1) // 2 padding and the stride in the 3x3, as mcjax.layers.conv2d.
        self.conv2 = nn.Conv2d(width, width, 3, stride=spec.stride, padding=1, groups=c, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, spec.out_channels, 1, bias=False)
        self.bn3 = _bn(spec.out_channels)
        self.relu = nn.ReLU(inplace=True)
        for conv, branch_out in ((self.conv1, b), (self.conv2, b), (self.conv3, spec.out_channels)):
            _he_normal_(conv.weight, branch_out)
        self.downsample: nn.Module | None = None
        if spec.has_projection:
            conv = nn.Conv2d(spec.in_channels, spec.out_channels, 1, stride=spec.stride, bias=False)
            _he_normal_(conv.weight, spec.out_channels)
            self.downsample = nn.Sequential(conv, _bn(spec.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.formulation == "grouped":
            h = self.relu(self.bn1(self.conv1(x)))
            h = self.relu(self.bn2(self.conv2(h)))
            out = self.bn3(self.conv3(h))
        else:
            out = self._per_branch(x)
        return self.relu(out + identity)

    def _per_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The same function, literally per branch: C ordinary convolutions per layer, each
        branch's BN on its own channels, and the expand convs summed before the one BN3."""

        def bn(layer: nn.BatchNorm2d, h: torch.Tensor, part: slice) -> torch.Tensor:
            # Views of the buffers: training updates the running statistics in place.
            return F.batch_norm(
                h,
                layer.running_mean[part],
                layer.running_var[part],
                layer.weight[part],
                layer.bias[part],
                training=self.training,
                momentum=layer.momentum,
                eps=layer.eps,
            )

        total = None
        for j in range(self.cardinality):
            part = slice(j * self.bottleneck, (j + 1) * self.bottleneck)
            h = F.relu(bn(self.bn1, F.conv2d(x, self.conv1.weight[part]), part))
            h = F.conv2d(h, self.conv2.weight[part], stride=self.stride, padding=1)
            h = F.relu(bn(self.bn2, h, part))
            y = F.conv2d(h, self.conv3.weight[:, part])
            total = y if total is None else total + y
        return self.bn3(total)


class ResNeXt(nn.Module):
    """stem -> ``layer1..layerN`` of :class:`Bottleneck` -> global average pool -> ``fc``.

    ``conv1``/``bn1``/``maxpool`` is the stem (``maxpool`` is the identity for the CIFAR
    stem). The head runs in float32 whatever the autocast dtype, as mcjax's.
    """

    def __init__(
        self,
        arch: Arch,
        num_classes: int,
        *,
        in_channels: int = 3,
        formulation: str = "grouped",
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        kernel = 7 if arch.stem == "imagenet" else 3
        self.conv1 = nn.Conv2d(
            in_channels,
            arch.stem_channels,
            kernel,
            stride=2 if arch.stem == "imagenet" else 1,
            padding=(kernel - 1) // 2,
            bias=False,
        )
        _he_normal_(self.conv1.weight, arch.stem_channels)
        self.bn1 = _bn(arch.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity()
        if arch.stem in ("imagenet", "cifar_maxpool"):
            # Pads with -inf, as mcjax.layers.max_pool.
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers = len(arch.stages)
        for index, stage in enumerate(arch.stages):
            blocks = nn.Sequential(*(Bottleneck(s, formulation=formulation) for s in stage))
            self.add_module(f"layer{index + 1}", blocks)
        if zero_init_residual:
            # As mcjax's configs for `full`: every module starts as its shortcut.
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
        self.fc = nn.Linear(arch.out_channels, num_classes)
        # mcjax zero-initialises the head: uniform logits at init.
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for index in range(self.layers):
            x = getattr(self, f"layer{index + 1}")(x)
        pooled = x.float().mean(dim=(2, 3))
        if x.device.type == "meta":  # flop_count: autocast has no meta device
            return self.fc(pooled)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.fc(pooled)


def torchvision_model(arch: str, num_classes: int) -> nn.Module | None:
    """``torchvision.models.<arch>`` (random weights), or None when torchvision has no such
    model. Raises ImportError without torchvision."""
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if builder is None or not arch.startswith("resnext"):
        return None
    return builder(weights=None, num_classes=num_classes)


def build_model(
    arch: str,
    num_classes: int,
    *,
    stem: str | None = None,
    in_channels: int = 3,
    formulation: str = "grouped",
    zero_init_residual: bool = True,
) -> ResNeXt:
    """The public-form network named ``arch`` (see :func:`architecture`)."""
    return ResNeXt(
        architecture(arch, stem),
        num_classes,
        in_channels=in_channels,
        formulation=formulation,
        zero_init_residual=zero_init_residual,
    )


def baseline_model(arch: str, num_classes: int, *, formulation: str = "grouped"):
    """The model timed as the public baseline: torchvision's for the ImageNet names it has,
    else :func:`build_model`. Returns ``(model, source)``."""
    if arch.startswith("resnext") and formulation == "grouped":
        with contextlib.suppress(ImportError):
            model = torchvision_model(arch, num_classes)
            if model is not None:
                return model, "torchvision"
    return build_model(arch, num_classes, formulation=formulation), "torch_reference"


def count_params(model: nn.Module) -> int:
    """Trainable scalars (BN running statistics are buffers, left out as by mcjax.costs)."""
    return sum(p.numel() for p in model.parameters())


# --- Port from mcjax `full` ----------------------------------------------------------------


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _conv(kernel) -> torch.Tensor:
    """HWIO ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]``."""
    return torch.from_numpy(np.ascontiguousarray(_array(kernel).transpose(3, 2, 0, 1)))


def _bn_state(prefix: str, params: Mapping, stats: Mapping, channels: int) -> dict:
    state = {}
    for key, source in (
        ("weight", params["scale"]),
        ("bias", params["bias"]),
        ("running_mean", stats["mean"]),
        ("running_var", stats["var"]),
    ):
        value = _array(source)
        if value.size != channels:
            raise ValueError(f"{prefix}.{key}: {value.shape} does not hold {channels} channels")
        state[f"{prefix}.{key}"] = torch.from_numpy(value.reshape(-1).copy())
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    return state


def port_mcjax_full(
    arch: str, params: Mapping, batch_stats: Mapping, *, stem: str | None = None
) -> dict[str, torch.Tensor]:
    """The state_dict of :func:`build_model` ``(arch)`` that computes mcjax ``full``'s function.

    Args:
      arch: the architecture name both sides were built from.
      params, batch_stats: mcjax ``full`` variables (jax or numpy arrays). Per module:
        ``conv1 [C,1,1,c_in,b]``, ``conv2 [C,3,3,b,b]``, ``bn1``/``bn2`` ``[C,b]``,
        ``conv3 [C,1,1,b,c_out]``, one ``bn3 [c_out]``, optional
        ``shortcut = {conv [1,1,c_in,c_out], bn}``; stem ``{conv [k,k,3,s], bn}``; head
        ``{kernel [c, classes], bias}``.

    Returns:
      float32 tensors by torch parameter/buffer name. Branch ``j``'s channel ``k`` becomes
      channel ``j*b + k`` of ``conv1``'s output, ``conv2``'s groups and ``conv3``'s input, so
      ``conv3`` (``[c_out, C*b, 1, 1]``) is the dense conv over the concatenated bottlenecks.

    Raises:
      ValueError: on any shape that does not fit ``arch`` (among them mcjax's earlier ``full``
        with one BN3 per branch, ``[C, c_out]``, which no single dense expand conv computes).
    """
    a = architecture(arch, stem)
    state = {"conv1.weight": _conv(params["stem"]["conv"])}
    state.update(_bn_state("bn1", params["stem"]["bn"], batch_stats["stem"]["bn"], a.stem_channels))
    flat = [(f"layer{i + 1}.{j}", m) for i, s in enumerate(a.stages) for j, m in enumerate(s)]
    if len(params["modules"]) != len(flat):
        raise ValueError(
            f"{arch}: {len(flat)} modules, the parameters have {len(params['modules'])}"
        )
    for (prefix, m), p, s in zip(flat, params["modules"], batch_stats["modules"], strict=True):
        c, b, c_in, c_out = m.cardinality, m.bottleneck, m.in_channels, m.out_channels
        expected = {
            "conv1": (c, 1, 1, c_in, b),
            "conv2": (c, 3, 3, b, b),
            "conv3": (c, 1, 1, b, c_out),
            "bn3": (c_out,),
        }
        got = {k: tuple(np.shape(p[k] if k != "bn3" else p[k]["scale"])) for k in expected}
        if got != expected:
            raise ValueError(
                f"{prefix}: mcjax shapes {got}, the public form needs {expected} (one BN3 over "
                "the sum of the branches)"
            )
        w1, w2, w3 = _array(p["conv1"]), _array(p["conv2"]), _array(p["conv3"])
        # [C,1,1,c_in,b] -> [C,b,c_in] -> [C*b, c_in, 1, 1]
        state[f"{prefix}.conv1.weight"] = torch.from_numpy(
            np.ascontiguousarray(w1[:, 0, 0].transpose(0, 2, 1).reshape(c * b, c_in, 1, 1))
        )
        # [C,3,3,b_in,b_out] -> [C,b_out,b_in,3,3] -> [C*b_out, b_in, 3, 3] (group j = branch j)
        state[f"{prefix}.conv2.weight"] = torch.from_numpy(
            np.ascontiguousarray(w2.transpose(0, 4, 3, 1, 2).reshape(c * b, b, 3, 3))
        )
        # [C,1,1,b,c_out] -> [C*b, c_out] -> [c_out, C*b, 1, 1]
        state[f"{prefix}.conv3.weight"] = torch.from_numpy(
            np.ascontiguousarray(w3[:, 0, 0].reshape(c * b, c_out).T.reshape(c_out, c * b, 1, 1))
        )
        for name, channels in (("bn1", c * b), ("bn2", c * b), ("bn3", c_out)):
            state.update(_bn_state(f"{prefix}.{name}", p[name], s[name], channels))
        if m.has_projection != ("shortcut" in p):
            raise ValueError(f"{prefix}: projection shortcut expected: {m.has_projection}")
        if m.has_projection:
            state[f"{prefix}.downsample.0.weight"] = _conv(p["shortcut"]["conv"])
            state.update(
                _bn_state(f"{prefix}.downsample.1", p["shortcut"]["bn"], s["shortcut"]["bn"], c_out)
            )
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(_array(params["head"]["kernel"]).T))
    state["fc.bias"] = torch.from_numpy(_array(params["head"]["bias"]).copy())
    return state


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
    # Process-wide and never reset: the largest so far in this process.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return maxrss / scale, "process max RSS"


def _optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # mcjax.optim.weight_sgd: decay added to the gradient before momentum, on every parameter.
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False)
    if device.type == "cuda":
        with contextlib.suppress(TypeError, RuntimeError):
            return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    return torch.optim.SGD(model.parameters(), **kwargs)


def time_setting(
    arch: str,
    *,
    layout: str,
    mode: str,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    dtype: str,
    formulation: str = "grouped",
    train: bool = True,
    infer: bool = True,
) -> dict:
    """Times one setting (memory layout x eager/compile) of the baseline model of ``arch``."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model, source = baseline_model(arch, num_classes, formulation=formulation)
    model = model.to(device, memory_format=memory_format)
    images = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = _optimizer(model, device)
    forward = torch.compile(model) if mode == "compile" else model

    def autocast() -> contextlib.AbstractContextManager:
        if dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
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
        with torch.inference_mode(), autocast():
            forward(images)

    row = {"layout": layout, "mode": mode, "source": source, "params": count_params(model)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if train:
        model.train()
        row["train_first_s"] = _timed(train_step, device)
        for _ in range(warmup):
            train_step()
        times = [_timed(train_step, device) for _ in range(steps)]
        row["train_ms_all"] = [1000 * t for t in times]
        row["train_ms"] = 1000 * statistics.median(times)
        row["train_images_per_s"] = batch / statistics.median(times)
        row["final_loss"] = float(losses[-1])
        row["peak_memory_mib"], row["peak_memory_kind"] = _peak_memory_mib(device)
    if infer:
        model.eval()
        row["infer_first_s"] = _timed(infer_step, device)
        for _ in range(warmup):
            infer_step()
        times = [_timed(infer_step, device) for _ in range(steps)]
        row["infer_ms_all"] = [1000 * t for t in times]
        row["infer_ms"] = 1000 * statistics.median(times)
        row["infer_images_per_s"] = batch / statistics.median(times)
    return row


def benchmark(
    arch: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    layouts: Sequence[str] = LAYOUTS,
    modes: Sequence[str] = MODES,
    formulation: str = "grouped",
    train: bool = True,
    infer: bool = True,
    deadline: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Times every setting in ``layouts x modes`` and reports the fastest for each task.

    A setting whose compilation or run raises is recorded with its ``error``; settings not
    started before ``deadline`` (a ``time.time()`` value) are recorded as ``skipped``.

    Returns:
      ``{"arch", ..., "settings": [per-setting rows], "train_images_per_s", "train_ms",
      "train_setting", "infer_images_per_s", "infer_ms", "infer_setting", "forward_flops"}``,
      the two best taken over the settings that ran.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if steps < 1 or warmup < 0 or batch < 1:
        raise ValueError("need steps >= 1, warmup >= 0, batch >= 1")
    for name, values, allowed in (("layouts", layouts, LAYOUTS), ("modes", modes, MODES)):
        if not values or set(values) - set(allowed):
            raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
    dev = torch.device(device)
    num_classes = default_num_classes(arch) if num_classes is None else num_classes
    image_size = default_image_size(arch) if image_size is None else image_size
    result = {
        "arch": arch,
        "framework": "torch",
        "device": str(dev),
        "dtype": dtype,
        "batch": batch,
        "image_size": image_size,
        "num_classes": num_classes,
        "formulation": formulation,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "forward_flops": forward_flops(arch, image_size=image_size, num_classes=num_classes),
        "settings": [],
    }
    for mode in modes:
        for layout in layouts:
            name = f"{layout}+{mode}"
            if deadline is not None and time.time() > deadline:
                result["settings"].append({"layout": layout, "mode": mode, "skipped": "deadline"})
                continue
            try:
                row = time_setting(
                    arch,
                    layout=layout,
                    mode=mode,
                    batch=batch,
                    steps=steps,
                    warmup=warmup,
                    image_size=image_size,
                    num_classes=num_classes,
                    device=dev,
                    dtype=dtype,
                    formulation=formulation,
                    train=train,
                    infer=infer,
                )
            except Exception as error:  # a backend that cannot compile this model, say
                if mode == "eager":
                    raise
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                row = {"layout": layout, "mode": mode, "error": message}
            result["settings"].append(row)
            if log is not None:
                log(_setting_line(arch, dtype, batch, name, row))
    for task in ("train", "infer"):
        ran = [r for r in result["settings"] if f"{task}_images_per_s" in r]
        if ran:
            best = max(ran, key=lambda r, task=task: r[f"{task}_images_per_s"])
            result[f"{task}_images_per_s"] = best[f"{task}_images_per_s"]
            result[f"{task}_ms"] = best[f"{task}_ms"]
            result[f"{task}_setting"] = f"{best['layout']}+{best['mode']}"
            result["source"] = best["source"]
            result["params"] = best["params"]
            if task == "train":
                result["peak_memory_mib"] = best["peak_memory_mib"]
                result["peak_memory_kind"] = best["peak_memory_kind"]
    return result


def _setting_line(arch: str, dtype: str, batch: int, name: str, row: dict) -> str:
    if "error" in row or "skipped" in row:
        return f"  {arch} {dtype} b{batch} {name}: {row.get('error', row.get('skipped'))}"
    parts = [f"  {arch} {dtype} b{batch} {name}:"]
    if "train_images_per_s" in row:
        parts.append(f"train {row['train_images_per_s']:.1f} img/s")
        parts.append(f"(first step {row['train_first_s']:.1f} s)")
    if "infer_images_per_s" in row:
        parts.append(f"infer {row['infer_images_per_s']:.1f} img/s")
    return " ".join(parts)


def machine_record(device: str = "cpu") -> dict:
    record = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": None,
    }
    with contextlib.suppress(ImportError):
        import torchvision

        record["torchvision"] = torchvision.__version__
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        record["cuda_device"] = torch.cuda.get_device_name(torch.device(device).index or 0)
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    return record


def configure(device: str, *, threads: int | None = None, tf32: bool = True) -> None:
    """Threads (default: every core of the machine) and, on CUDA, cuDNN autotuning and TF32."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if torch.device(device).type == "cuda":
        # XLA autotunes convolution algorithms when it compiles; this is eager PyTorch's
        # equivalent, paid in the first step.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


# --- Checks ----------------------------------------------------------------------------------


def relative_error(got, expected) -> float:
    """``||got - expected|| / ||expected||`` over the whole tensor (float64)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


# float32 convolutions summed in another order (another library, algorithm or grouping): a few
# ulps (1.2e-7 each) per accumulation, compounded over a few dozen layers and BN's division by
# batch standard deviations, stays orders of magnitude under this bound.
TOLERANCE = 1e-4


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine and running statistics and a random head, so that nothing the checks
    compare is trivially zero or one (the zero inits hide a wrong port of those tensors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def logits_pair(
    model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, *, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of two models on the same images (no gradients) in train or eval mode."""
    outputs = []
    for model in (model_a, model_b):
        model.train(train)
        with torch.no_grad():
            outputs.append(model(images).numpy())
    return outputs[0], outputs[1]


def flop_count(model: nn.Module, image_size: int) -> int:
    """Forward FLOPs per image counted by ``torch.utils.flop_counter`` (on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    return int(counter.get_total_flops())


def paper_param_anchors() -> dict[str, tuple[int, float]]:
    """Published parameter counts of the public form: ``arch -> (classes, millions)``.

    ResNeXt-29 8x64d on CIFAR-10 is 34.4M (Xie et al. 2017, Table 7). The MaskConnect paper's
    0.28M (``20,4,8``) and 0.86M (``29,8,8``) on CIFAR-100 are the counts with one BN3 per
    branch (``2 * (C - 1) * c_out`` more per module); they are no anchor for this form.
    """
    return {"29,64,8": (10, 34.4)}


def self_checks(
    archs: Iterable[str] = ("20,4,8", "29,4,8", "29,8,8", "29,64,8"), *, small: str = "11,4,4"
) -> bool:
    """Checks that need no jax: counts against hand formulas, papers and torch's FLOP counter;
    the grouped form against the per-branch one; our ImageNet network against torchvision."""
    ok = True
    print(
        "| arch | torch params | by hand | paper | forward FLOPs (formula) | torch FLOP counter |"
    )
    print("|---|---|---|---|---|---|")
    anchors = paper_param_anchors()
    for arch in archs:
        classes = default_num_classes(arch)
        size = default_image_size(arch)
        model = build_model(arch, classes)
        params, by_hand = count_params(model), expected_params(arch, classes)
        paper = anchors.get(arch)
        paper_ok = paper is None or round(expected_params(arch, paper[0]) / 1e6, 1) == paper[1]
        flops = forward_flops(arch, image_size=size, num_classes=classes)
        counted = flop_count(model, size)
        match = params == by_hand and paper_ok and flops == counted
        ok &= match
        print(
            f"| {arch} | {params:,} | {by_hand:,} "
            f"| {f'{paper[1]}M ({paper[0]} classes)' if paper else '-'} "
            f"| {flops:,} | {counted:,} |" + ("" if match else " MISMATCH")
        )

    torch.manual_seed(0)
    grouped = randomize_(build_model(small, 10))
    per_branch = build_model(small, 10, formulation="per_branch")
    per_branch.load_state_dict(grouped.state_dict())
    images = torch.randn(4, 3, 16, 16)
    for train in (False, True):
        a, b = logits_pair(grouped, per_branch, images, train=train)
        error = relative_error(a, b)
        ok &= error < TOLERANCE
        print(f"{small} grouped vs per-branch, {'train' if train else 'eval'}: {error:.1e}")
    # Training mode updated both models' running statistics in place: they must agree too.
    stats_error = max(
        relative_error(x, y)
        for (k, x), (_, y) in zip(
            grouped.state_dict().items(), per_branch.state_dict().items(), strict=True
        )
        if k.endswith(("running_mean", "running_var"))
    )
    ok &= stats_error < TOLERANCE
    print(f"{small} running statistics after one train step: {stats_error:.1e}")

    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("torchvision not installed: its checks skipped")
        return ok
    for arch, expected in TORCHVISION_PARAMS.items():
        reference = torchvision_model(arch, 1000)
        ours = randomize_(build_model(arch, 1000))
        tv_params = count_params(reference)
        same_keys = {k: tuple(v.shape) for k, v in reference.state_dict().items()} == {
            k: tuple(v.shape) for k, v in ours.state_dict().items()
        }
        reference.load_state_dict(ours.state_dict())
        images = torch.randn(2, 3, 64, 64)
        errors = [
            relative_error(*logits_pair(ours, reference, images, train=t)) for t in (False, True)
        ]
        flops = forward_flops(arch, image_size=224, num_classes=1000)
        counted = flop_count(reference, 224)
        match = tv_params == expected == count_params(ours) and same_keys and flops == counted
        match &= max(errors) < TOLERANCE
        ok &= match
        print(
            f"{arch}: torchvision {tv_params:,} params (expected {expected:,}), ours "
            f"{count_params(ours):,}; same state_dict keys and shapes: {same_keys}; logits "
            f"eval {errors[0]:.1e}, train {errors[1]:.1e}; forward FLOPs at 224: formula "
            f"{flops:,}, counted {counted:,}" + ("" if match else "  MISMATCH")
        )
    return ok


def mcjax_checks(
    archs: Iterable[str] = ("20,4,8", "29,8,8", "29,64,8", "resnext50_32x4d"),
    *,
    forward_arch: str = "11,4,4",
) -> bool:
    """Against mcjax: structure and parameter counts, and ported ``full`` logits (train and
    eval mode). Needs jax and mcjax with ``full`` in ResNeXt's form (one BN3 per module)."""
    import jax

    from mcjax import costs, models
    from mcjax.architectures import get_architecture

    ok = True
    print("| arch | torch params | mcjax params | mcjax costs | structure | match |")
    print("|---|---|---|---|---|---|")
    for arch in archs:
        classes = default_num_classes(arch)
        jarch = get_architecture(arch)
        net = models.Network(jarch, num_classes=classes, connectivity="full")
        shapes = jax.eval_shape(lambda net=net: models.init(jax.random.key(0), net))
        jax_params = costs.count_params(shapes["params"])
        table = costs.network_costs(
            jarch, image_size=32, num_classes=classes, per_block_inputs=False
        )
        ours = architecture(arch)
        same = (ours.stem, ours.stem_channels) == (jarch.stem, jarch.stem_channels) and [
            dataclasses.astuple(m) for m in ours.modules
        ] == [dataclasses.astuple(m) for m in jarch.modules]
        by_hand = expected_params(arch, classes)
        flops = forward_flops(arch, image_size=32, num_classes=classes)
        match = same and by_hand == jax_params == table["params"]
        match &= flops == table["flops_per_image"]
        ok &= match
        print(
            f"| {arch} | {by_hand:,} | {jax_params:,} | {table['params']:,} "
            f"| {'same' if same else 'DIFFERENT'} | {'yes' if match else 'NO'} |"
        )

    net = models.Network(get_architecture(forward_arch), num_classes=10, connectivity="full")
    variables = models.init(jax.random.key(0), net)
    params, batch_stats = perturbed_variables(variables["params"], variables["batch_stats"])
    images = np.asarray(jax.random.normal(jax.random.key(2), (4, 16, 16, 3)))
    for train in (False, True):
        expected, _ = models.apply(net, params, batch_stats, images, connectivity=None, train=train)
        try:
            got = ported_logits(forward_arch, params, batch_stats, images, train=train)
        except ValueError as error:
            print(f"port of mcjax {forward_arch} full: {error}")
            return False
        error = relative_error(got, expected)
        ok &= error < TOLERANCE
        mode = "train" if train else "eval"
        print(f"{forward_arch} mcjax full vs ported torch, {mode} mode: relative error {error:.1e}")
    return ok


def _map_leaves(tree, fn, key: str = ""):
    """``fn(key, leaf)`` over a tree of dicts and lists; ``key`` is the leaf's dict key."""
    if isinstance(tree, Mapping):
        return {k: _map_leaves(v, fn, k) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_map_leaves(v, fn, key) for v in tree]
    return fn(key, np.asarray(tree, np.float32))


def perturbed_variables(params, batch_stats, *, seed: int = 1):
    """mcjax variables moved off their init (zero head, unit BN scale, zero/one statistics), so
    that a port that drops or swaps any tensor shows in the logits. Variances stay positive."""
    rng = np.random.default_rng(seed)

    def noise(x, std):
        return (x + std * rng.standard_normal(x.shape)).astype(np.float32)

    params = _map_leaves(params, lambda _, x: noise(x, 0.1))
    stats = _map_leaves(
        batch_stats,
        lambda key, x: (
            (0.5 + rng.random(x.shape)).astype(np.float32) if key == "var" else noise(x, 0.2)
        ),
    )
    return params, stats


def random_full_variables(arch: str, num_classes: int, *, seed: int = 0) -> tuple[dict, dict]:
    """Random mcjax ``full`` variables of ``arch`` in the layout :func:`port_mcjax_full` reads
    (numpy, no jax): He-normal kernels, random BN affine and statistics, a random head."""
    a = architecture(arch)
    rng = np.random.default_rng(seed)

    def kernel(*shape):
        return (
            rng.standard_normal(shape) * (2.0 / np.prod(shape[-4:-2]) / shape[-1]) ** 0.5
        ).astype(np.float32)

    def bn(*shape):
        return (
            {
                "scale": (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32),
                "bias": (0.2 * rng.standard_normal(shape)).astype(np.float32),
            },
            {
                "mean": (0.2 * rng.standard_normal(shape)).astype(np.float32),
                "var": (0.5 + rng.random(shape)).astype(np.float32),
            },
        )

    k = 7 if a.stem == "imagenet" else 3
    stem_bn = bn(a.stem_channels)
    params = {"stem": {"conv": kernel(k, k, 3, a.stem_channels), "bn": stem_bn[0]}, "modules": []}
    stats = {"stem": {"bn": stem_bn[1]}, "modules": []}
    for m in a.modules:
        c, b = m.cardinality, m.bottleneck
        p = {
            "conv1": kernel(c, 1, 1, m.in_channels, b),
            "conv2": kernel(c, 3, 3, b, b),
            "conv3": kernel(c, 1, 1, b, m.out_channels),
        }
        s = {}
        for name, shape in (("bn1", (c, b)), ("bn2", (c, b)), ("bn3", (m.out_channels,))):
            p[name], s[name] = bn(*shape)
        if m.has_projection:
            bn_p, bn_s = bn(m.out_channels)
            p["shortcut"] = {"conv": kernel(1, 1, m.in_channels, m.out_channels), "bn": bn_p}
            s["shortcut"] = {"bn": bn_s}
        params["modules"].append(p)
        stats["modules"].append(s)
    params["head"] = {
        "kernel": (0.1 * rng.standard_normal((a.out_channels, num_classes))).astype(np.float32),
        "bias": (0.1 * rng.standard_normal(num_classes)).astype(np.float32),
    }
    return params, stats


def agreed_layout_logits(arch: str, params, batch_stats, images, *, train: bool):
    """An independent JAX forward of the ``full`` layout :func:`port_mcjax_full` reads, written
    branch by branch from ``mcjax.layers`` (one ordinary conv per branch and layer, each
    branch's BN on its own slice, ``sum_j conv3_j(h_j)``, one BN3): ``images [N,H,W,3]`` ->
    logits ``[N, classes]``. It checks the port while mcjax's own ``full`` may differ."""
    import jax
    import jax.numpy as jnp

    from mcjax import layers

    a = architecture(arch)

    def bn(x, p, s, index=None):
        if index is not None:
            p = {k: v[index] for k, v in p.items()}
            s = {k: v[index] for k, v in s.items()}
        return layers.batch_norm(x, p, s, axes=(0, 1, 2), train=train)[0]

    x = layers.conv2d(
        jnp.asarray(images), params["stem"]["conv"], stride=2 if a.stem == "imagenet" else 1
    )
    x = jax.nn.relu(bn(x, params["stem"]["bn"], batch_stats["stem"]["bn"]))
    if a.stem in ("imagenet", "cifar_maxpool"):
        x = layers.max_pool(x)
    for m, p, s in zip(a.modules, params["modules"], batch_stats["modules"], strict=True):
        total = 0
        for j in range(m.cardinality):
            h = jax.nn.relu(bn(layers.conv2d(x, p["conv1"][j]), p["bn1"], s["bn1"], j))
            h = layers.conv2d(h, p["conv2"][j], stride=m.stride)
            h = jax.nn.relu(bn(h, p["bn2"], s["bn2"], j))
            total = total + layers.conv2d(h, p["conv3"][j])
        residual = bn(total, p["bn3"], s["bn3"])
        shortcut = x
        if m.has_projection:
            shortcut = layers.conv2d(x, p["shortcut"]["conv"], stride=m.stride)
            shortcut = bn(shortcut, p["shortcut"]["bn"], s["shortcut"]["bn"])
        x = jax.nn.relu(shortcut + residual)
    return x.mean(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]


def ported_logits(arch: str, params, batch_stats, images, *, train: bool) -> np.ndarray:
    """Logits of :func:`build_model` ``(arch)`` with :func:`port_mcjax_full` weights on NHWC
    ``images`` (numpy), in train mode (batch statistics) or eval mode."""
    model = build_model(arch, len(np.asarray(params["head"]["bias"])))
    model.load_state_dict(port_mcjax_full(arch, params, batch_stats))
    model.train(train)
    with torch.no_grad():
        return model(
            torch.from_numpy(np.asarray(images, np.float32).transpose(0, 3, 1, 2).copy())
        ).numpy()


def layout_checks(arch: str = "11,4,4") -> bool:
    """The port against :func:`agreed_layout_logits` on random variables (needs jax and
    ``mcjax.layers`` only), train and eval mode."""
    params, stats = random_full_variables(arch, 10)
    images = np.random.default_rng(3).standard_normal((4, 16, 16, 3)).astype(np.float32)
    ok = True
    for train in (False, True):
        expected = agreed_layout_logits(arch, params, stats, images, train=train)
        error = relative_error(ported_logits(arch, params, stats, images, train=train), expected)
        ok &= error < TOLERANCE
        mode = "train" if train else "eval"
        print(f"{arch} port vs the per-branch JAX form, {mode} mode: relative error {error:.1e}")
    return ok


# --- Command line --------------------------------------------------------------------------


def markdown(results: Sequence[dict]) -> str:
    """One table row per (arch, dtype, batch): each task's fastest setting and all settings."""
    lines = [
        "| arch | source | dtype | batch | train img/s | train setting | infer img/s "
        "| infer setting | TFLOP/s train | peak MiB | all settings (train img/s) |",
        "|" + "---|" * 11,
    ]
    for r in results:
        settings = ", ".join(
            f"{s['layout']}+{s['mode']} "
            + (f"{s['train_images_per_s']:.1f}" if "train_images_per_s" in s else "-")
            if "error" not in s and "skipped" not in s
            else f"{s['layout']}+{s['mode']} {'failed' if 'error' in s else 'skipped'}"
            for s in r["settings"]
        )
        train = r.get("train_images_per_s")
        tflops = 3 * r["forward_flops"] * train / 1e12 if train else None
        lines.append(
            f"| {r['arch']} | {r.get('source', '-')} | {r['dtype']} | {r['batch']} "
            f"| {_fmt(train, ',.1f')} | {r.get('train_setting', '-')} "
            f"| {_fmt(r.get('infer_images_per_s'), ',.1f')} | {r.get('infer_setting', '-')} "
            f"| {_fmt(tflops, '.3f')} | {_fmt(r.get('peak_memory_mib'), ',.0f')} | {settings} |"
        )
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", action="extend", help="one or more architectures")
    parser.add_argument("--batch", nargs="+", type=int, default=[128])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None, help="32, or 224 for resnext*")
    parser.add_argument("--num_classes", type=int, default=None, help="100, or 1000 for resnext*")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--formulation", default="grouped", choices=FORMULATIONS)
    parser.add_argument("--threads", type=int, default=None, help="default: all the cores")
    parser.add_argument(
        "--tf32", action=argparse.BooleanOptionalAction, default=True, help="float32 on CUDA"
    )
    parser.add_argument("--out", default=None, help="write the results and machine as JSON")
    parser.add_argument("--check", action="store_true", help="run the checks, then exit")
    parser.add_argument(
        "--check_torch_only", action="store_true", help="only the checks that need no jax"
    )
    args = parser.parse_args(argv)

    if args.check or args.check_torch_only:
        ok = self_checks()
        if not args.check_torch_only:
            ok &= layout_checks()
            ok &= mcjax_checks()
        print("check passed" if ok else "check FAILED")
        return 0 if ok else 1

    configure(args.device, threads=args.threads, tf32=args.tf32)
    results = []
    for arch in args.arch or ["20,4,8"]:
        for dtype in args.dtype:
            for batch in args.batch:
                results.append(
                    benchmark(
                        arch,
                        batch=batch,
                        steps=args.steps,
                        warmup=args.warmup,
                        image_size=args.image_size,
                        num_classes=args.num_classes,
                        device=args.device,
                        dtype=dtype,
                        layouts=args.layouts,
                        modes=args.modes,
                        formulation=args.formulation,
                        log=lambda line: print(line, flush=True),
                    )
                )
    machine = machine_record(args.device)
    print(
        f"\ntorch {machine['torch']}, {args.device}"
        + (f" ({machine['cuda_device']})" if machine["cuda_device"] else "")
        + f", {machine['cpu_count']} CPUs, {machine['torch_threads']} threads; "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
