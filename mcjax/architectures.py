"""Static descriptions of the multi-branch networks of the paper, by name.

An :class:`Architecture` is hashable and holds no arrays: it is what ``jit`` sees as
a static argument. Names:

* CIFAR / Mini-ImageNet (paper Tables 5 and 6): ``"20,4,8"``, ``"29,4,8"``,
  ``"29,8,8"``, ``"29,64,8"``, and any ``"D,w,C"`` with ``D = 2 + 3L`` and ``L`` a
  multiple of 3 (three stages of ``L / 3`` modules; bottleneck widths ``w, 2w, 4w``;
  stage outputs 64/128/256 with a 16-filter stem, or ``4w, 8w, 16w`` with a
  64-filter stem when ``w >= 64``, as in Table 5).
* ImageNet (Xie et al. 2017): ``"resnext50_32x4d"``, ``"resnext101_32x4d"``,
  ``"resnext101_64x4d"``, and generally ``"resnext{50,101,152}_{C}x{w}d"``.

Stems: ``"cifar"`` (3x3 conv), ``"cifar_maxpool"`` (3x3 conv then 3x3/2 max-pool,
Mini-ImageNet, Table 6) and ``"imagenet"`` (7x7/2 conv then 3x3/2 max-pool).
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["PAPER_ARCHITECTURES", "STEMS", "Architecture", "ModuleSpec", "get_architecture"]

STEMS = ("cifar", "cifar_maxpool", "imagenet")

PAPER_ARCHITECTURES = (
    "20,4,8",
    "29,4,8",
    "29,8,8",
    "29,64,8",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_64x4d",
)

_IMAGENET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """One multi-branch module: ``cardinality`` bottleneck blocks in parallel.

    Each block maps ``in_channels -> bottleneck -> bottleneck -> out_channels``
    (1x1, 3x3 with ``stride``, 1x1). The module's shortcut is a projection
    (1x1 conv with ``stride`` + BN, shared by the blocks) when the shapes change.
    """

    in_channels: int
    bottleneck: int
    out_channels: int
    stride: int
    cardinality: int

    @property
    def has_projection(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A whole network: ``stem -> modules -> head``.

    Attributes:
      name: the name it was built from (pruned networks append ``"-pruned"``).
      stem: one of :data:`STEMS`.
      stem_channels: filters of the stem convolution.
      modules: the modules in order. Cardinalities may differ between modules
        only in pruned networks.
    """

    name: str
    stem: str
    stem_channels: int
    modules: tuple[ModuleSpec, ...]

    def __post_init__(self):
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if not self.modules:
            raise ValueError("an architecture needs at least one module")
        previous = self.stem_channels
        for index, module in enumerate(self.modules):
            if module.in_channels != previous:
                raise ValueError(
                    f"module {index} takes {module.in_channels} channels but receives {previous}"
                )
            previous = module.out_channels

    @property
    def cardinality(self) -> int:
        """The largest number of branches of any module (``C``)."""
        return max(m.cardinality for m in self.modules)

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def depth(self) -> int:
        """``D = 2 + 3L`` (paper Sec. 2.1)."""
        return 2 + 3 * len(self.modules)

    @property
    def out_channels(self) -> int:
        return self.modules[-1].out_channels

    @property
    def mask_shapes(self) -> tuple[tuple[int, int], ...]:
        """Shape ``[C_i, C_{i-1}]`` of the mask matrix of each module ``i >= 2``."""
        return tuple(
            (cur.cardinality, prev.cardinality)
            for prev, cur in zip(self.modules[:-1], self.modules[1:], strict=True)
        )

    def with_cardinalities(self, cardinalities) -> Architecture:
        """The same network with ``cardinalities[i]`` branches in module ``i``."""
        cardinalities = tuple(int(c) for c in cardinalities)
        if len(cardinalities) != len(self.modules):
            raise ValueError(f"need {len(self.modules)} cardinalities, got {len(cardinalities)}")
        if min(cardinalities) < 1:
            raise ValueError(f"every module needs at least one branch, got {cardinalities}")
        modules = tuple(
            dataclasses.replace(m, cardinality=c)
            for m, c in zip(self.modules, cardinalities, strict=True)
        )
        return dataclasses.replace(self, modules=modules)


def _stages(stem, stem_channels, blocks_per_stage, widths, outs, strides, cardinality):
    modules = []
    channels = stem_channels
    for count, width, out, stride in zip(blocks_per_stage, widths, outs, strides, strict=True):
        for index in range(count):
            modules.append(
                ModuleSpec(
                    in_channels=channels,
                    bottleneck=width,
                    out_channels=out,
                    stride=stride if index == 0 else 1,
                    cardinality=cardinality,
                )
            )
            channels = out
    return stem_channels, tuple(modules)


def _cifar(depth: int, width: int, cardinality: int, stem: str, name: str) -> Architecture:
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(
            f"architecture {name!r}: depth D must be 2 + 3L with L a positive multiple "
            f"of 3 (three stages), e.g. 11, 20, 29, 38; got D={depth}"
        )
    per_stage = (depth - 2) // 9
    if width >= 64:
        stem_channels, outs = 64, (4 * width, 8 * width, 16 * width)
    else:
        stem_channels, outs = 16, (64, 128, 256)
    stem_channels, modules = _stages(
        stem,
        stem_channels,
        (per_stage,) * 3,
        (width, 2 * width, 4 * width),
        outs,
        (1, 2, 2),
        cardinality,
    )
    return Architecture(name=name, stem=stem, stem_channels=stem_channels, modules=modules)


def _imagenet(layers: int, cardinality: int, width: int, stem: str, name: str) -> Architecture:
    if layers not in _IMAGENET_STAGES:
        raise ValueError(
            f"architecture {name!r}: ResNeXt depth must be one of "
            f"{sorted(_IMAGENET_STAGES)}, got {layers}"
        )
    # ResNeXt's "Cxwd": w is the width of one branch in the first stage.
    stem_channels, modules = _stages(
        stem,
        64,
        _IMAGENET_STAGES[layers],
        (width, 2 * width, 4 * width, 8 * width),
        (256, 512, 1024, 2048),
        (1, 2, 2, 2),
        cardinality,
    )
    return Architecture(name=name, stem=stem, stem_channels=stem_channels, modules=modules)


def get_architecture(name: str, *, stem: str | None = None) -> Architecture:
    """Builds an architecture from its name (see the module docstring).

    Args:
      name: ``"D,w,C"`` (e.g. ``"29,8,8"``) or ``"resnext{50,101,152}_{C}x{w}d"``.
      stem: overrides the default stem (``"cifar"`` for ``D,w,C`` names,
        ``"imagenet"`` for ResNeXt names); ``"cifar_maxpool"`` gives the
        Mini-ImageNet networks of Table 6.

    Raises:
      ValueError: for an unknown name or stem, naming what is allowed.
    """
    text = str(name).replace(" ", "")
    match_cifar = re.fullmatch(r"\{?(\d+),(\d+),(\d+)\}?", text)
    match_imagenet = re.fullmatch(r"resnext(\d+)_(\d+)x(\d+)d", text)
    if match_cifar:
        depth, width, cardinality = (int(g) for g in match_cifar.groups())
        default_stem = "cifar"
    elif match_imagenet:
        layers, cardinality, width = (int(g) for g in match_imagenet.groups())
        default_stem = "imagenet"
    else:
        raise ValueError(
            f"unknown architecture {name!r}: use 'D,w,C' (e.g. '29,8,8') or "
            f"'resnext{{50,101,152}}_{{C}}x{{w}}d'; the paper's are "
            + ", ".join(PAPER_ARCHITECTURES)
        )
    if min(width, cardinality) < 1:
        raise ValueError(f"architecture {name!r}: width and cardinality must be >= 1")
    stem = default_stem if stem is None else stem
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if match_cifar:
        return _cifar(depth, width, cardinality, stem, text)
    return _imagenet(layers, cardinality, width, stem, text)
