r"""The public PyTorch ResNeXt that mcjax is compared with: its tables, costs, model and port.

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
and ``torchvision.models.resnext50_32x4d`` share one state_dict. The timed ImageNet-shape
baseline is torchvision's model itself (:func:`baseline_model`).

Equivalently, per branch ``j = 1..C`` (what :func:`ResNeXt` computes with
``formulation="per_branch"``): ``h_j = ReLU(BN2_j(conv3x3_j(ReLU(BN1_j(conv1x1_j(x))))))`` and
``y = ReLU(S(x) + BN3(sum_j conv1x1_expand_j(h_j)))``. That is the layout of mcjax's ``full``
parameters (``conv1 [C,1,1,c_in,b]``, ``conv2 [C,3,3,b,b]``, ``bn1``/``bn2`` ``[C,b]``,
``conv3 [C,1,1,b,c_out]``, ``bn3 [c_out]``), which :func:`port_mcjax_full` maps onto this
network (channels branch-major: channel ``j*b + k`` is channel ``k`` of branch ``j``). The two
compute the same logits in eval mode and in train mode (batch statistics); their running
statistics differ slightly after a train step (PyTorch keeps the unbiased batch variance,
mcjax the biased one).

This module is the reference itself, what the tests import:

* the architecture tables (:func:`architecture`, mirroring ``mcjax.architectures`` without
  importing jax) and the costs counted by hand (:func:`expected_params`,
  :func:`forward_flops`);
* the model (:class:`ResNeXt`, :func:`build_model`, torchvision's :func:`baseline_model`);
* the port of mcjax ``full`` variables (:func:`port_mcjax_full`) and the comparisons that
  check it (:func:`relative_error`, :func:`ported_logits`, :func:`agreed_layout_logits`, ...).

Timing it is ``benchmarks/harness.py``'s job (``torch_benchmark``), checking it
``benchmarks/torch_checks.py``'s (``python benchmarks/torch_checks.py --check``). Everything
here but :func:`agreed_layout_logits` (jax and ``mcjax.layers``) needs PyTorch alone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TOLERANCE",
    "TORCHVISION_PARAMS",
    "ModuleSpec",
    "ResNeXt",
    "agreed_layout_logits",
    "architecture",
    "baseline_model",
    "build_model",
    "count_params",
    "expected_params",
    "flop_count",
    "forward_flops",
    "port_mcjax_full",
    "ported_logits",
    "relative_error",
]

# mcjax.layers: running = 0.9 * running + 0.1 * batch; PyTorch's momentum is the other weight.
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5
STEMS = ("cifar", "cifar_maxpool", "imagenet")
FORMULATIONS = ("grouped", "per_branch")
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


# --- Comparisons (what the checks and the tests use) ------------------------------------------


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
