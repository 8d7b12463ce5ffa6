"""Architectures by name: module layouts of the paper's tables and parameter budgets.

Every expected number here comes from the paper (Tables 1, 5, 6 and Fig. 2) or from
the ResNeXt paper (Xie et al. 2017, Table 1), not from running the code.
"""

import re

import jax
import numpy as np
import pytest

from mcjax import models
from mcjax.architectures import (
    PAPER_ARCHITECTURES,
    Architecture,
    ModuleSpec,
    get_architecture,
)

# name -> (number of modules L, cardinality C, stem, stem filters); D = 2 + 3L.
PAPER = {
    "20,4,8": (6, 8, "cifar", 16),
    "29,4,8": (9, 8, "cifar", 16),
    "29,8,8": (9, 8, "cifar", 16),
    "29,64,8": (9, 8, "cifar", 64),
    "resnext50_32x4d": (16, 32, "imagenet", 64),
    "resnext101_32x4d": (33, 32, "imagenet", 64),
    "resnext101_64x4d": (33, 64, "imagenet", 64),
}


def _expand(rows):
    """Table rows ``(in, bottleneck, out, repeat)`` -> list of ``(in, b, out)``."""
    out = []
    for c_in, b, c_out, repeat in rows:
        out.extend([(c_in, b, c_out)] * repeat)
    return out


# Paper Table 5 (and Table 6, the same modules): one bracket per row, "x2" = repeat 2.
TABLE_5 = {
    "20,4,8": _expand(
        [
            (16, 4, 64, 1),
            (64, 4, 64, 1),
            (64, 8, 128, 1),
            (128, 8, 128, 1),
            (128, 16, 256, 1),
            (256, 16, 256, 1),
        ]
    ),
    "29,4,8": _expand(
        [
            (16, 4, 64, 1),
            (64, 4, 64, 2),
            (64, 8, 128, 1),
            (128, 8, 128, 2),
            (128, 16, 256, 1),
            (256, 16, 256, 2),
        ]
    ),
    "29,8,8": _expand(
        [
            (16, 8, 64, 1),
            (64, 8, 64, 2),
            (64, 16, 128, 1),
            (128, 16, 128, 2),
            (128, 32, 256, 1),
            (256, 32, 256, 2),
        ]
    ),
    "29,64,8": _expand(
        [
            (64, 64, 256, 1),
            (256, 64, 256, 2),
            (256, 128, 512, 1),
            (512, 128, 512, 2),
            (512, 256, 1024, 1),
            (1024, 256, 1024, 2),
        ]
    ),
}


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _param_count(net) -> int:
    """Parameters of ``models.init`` without the masks (BN scale/bias in, stats out)."""
    variables = jax.eval_shape(lambda key: models.init(key, net), jax.random.key(0))
    params = {k: v for k, v in variables["params"].items() if k != "masks"}
    return _count(params)


def test_paper_architecture_list_is_complete():
    assert set(PAPER_ARCHITECTURES) == set(PAPER)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_architectures_build(name):
    num_modules, cardinality, stem, stem_channels = PAPER[name]
    arch = get_architecture(name)
    assert isinstance(arch, Architecture)
    assert arch.num_modules == num_modules
    assert len(arch.modules) == num_modules
    assert arch.cardinality == cardinality
    assert all(m.cardinality == cardinality for m in arch.modules)
    assert arch.stem == stem
    assert arch.stem_channels == stem_channels
    # D = 2 + 3L: the D of "D,w,C", the 50 / 101 of "resnext50/101".
    expected_depth = int(re.match(r"\{?(?:resnext)?(\d+)", name).group(1))
    assert arch.depth == 2 + 3 * num_modules == expected_depth
    # C x C masks between consecutive modules.
    assert arch.mask_shapes == ((cardinality, cardinality),) * (num_modules - 1)
    # Architectures are static jit arguments: hashable and equal when rebuilt.
    assert hash(arch) == hash(get_architecture(name))
    assert arch == get_architecture(name)


@pytest.mark.parametrize("name", list(TABLE_5))
def test_table_5_channel_layout(name):
    arch = get_architecture(name)
    layout = [(m.in_channels, m.bottleneck, m.out_channels) for m in arch.modules]
    assert layout == TABLE_5[name]
    assert arch.stem_channels == TABLE_5[name][0][0]
    # Stages of L/3 modules; the first module of stages 2 and 3 halves the
    # feature maps (32 -> 16 -> 8 on CIFAR, appendix E.1).
    per_stage = arch.num_modules // 3
    strides = [m.stride for m in arch.modules]
    assert strides == [1] * per_stage + ([2] + [1] * (per_stage - 1)) * 2
    # Projection shortcuts exactly where the shape changes.
    for m in arch.modules:
        assert m.has_projection == (m.stride != 1 or m.in_channels != m.out_channels)


@pytest.mark.parametrize(
    ("name", "stages", "width"),
    [
        ("resnext50_32x4d", (3, 4, 6, 3), 4),
        ("resnext101_32x4d", (3, 4, 23, 3), 4),
        ("resnext101_64x4d", (3, 4, 23, 3), 4),
    ],
)
def test_resnext_layouts(name, stages, width):
    # Xie et al. 2017, Table 1: stage outputs 256/512/1024/2048, per-branch
    # bottleneck width doubling per stage, stride 2 at the start of stages 2-4.
    arch = get_architecture(name)
    expected = []
    channels = 64
    for stage, count in enumerate(stages):
        out = 256 * 2**stage
        for index in range(count):
            stride = 2 if (index == 0 and stage > 0) else 1
            expected.append((channels, width * 2**stage, out, stride))
            channels = out
    got = [(m.in_channels, m.bottleneck, m.out_channels, m.stride) for m in arch.modules]
    assert got == expected


def test_cifar_maxpool_stem_keeps_the_modules():
    # Table 6 (Mini-ImageNet): the CIFAR networks with a max-pool after the stem.
    for name in ("20,4,8", "29,8,8"):
        plain = get_architecture(name)
        pooled = get_architecture(name, stem="cifar_maxpool")
        assert pooled.stem == "cifar_maxpool"
        assert pooled.modules == plain.modules
        assert pooled.stem_channels == plain.stem_channels == 16
        assert pooled != plain


def test_generic_names():
    arch = get_architecture("38,4,8")
    assert arch.num_modules == 12 and arch.depth == 38
    arch = get_architecture("11,2,4")
    assert [(m.in_channels, m.bottleneck, m.out_channels) for m in arch.modules] == [
        (16, 2, 64),
        (64, 4, 128),
        (128, 8, 256),
    ]
    assert arch.cardinality == 4
    # Braces and spaces as the paper writes them.
    assert get_architecture("{20, 4, 8}").modules == get_architecture("20,4,8").modules


@pytest.mark.parametrize(
    ("name", "stem", "match"),
    [
        ("resnet50", None, "29,8,8"),  # unknown: lists the paper's names
        ("20,4", None, "D,w,C"),
        ("21,4,8", None, "2 \\+ 3L"),  # L = 19/3 is not a whole number of modules
        ("23,4,8", None, "2 \\+ 3L"),  # L = 7 modules do not split into 3 stages
        ("20,0,8", None, "width"),
        ("20,4,0", None, "cardinality"),
        ("resnext34_32x4d", None, "50"),
        ("20,4,8", "resnet", "cifar_maxpool"),  # the message lists the stems
    ],
)
def test_bad_names_raise_helpful_value_error(name, stem, match):
    with pytest.raises(ValueError, match=match):
        get_architecture(name, stem=stem)


def test_architecture_checks_channel_chain():
    with pytest.raises(ValueError, match="channels"):
        Architecture(
            name="bad",
            stem="cifar",
            stem_channels=16,
            modules=(ModuleSpec(16, 4, 64, 1, 8), ModuleSpec(32, 4, 64, 1, 8)),
        )
    with pytest.raises(ValueError, match="stem"):
        Architecture(
            name="bad", stem="vgg", stem_channels=16, modules=(ModuleSpec(16, 4, 64, 1, 8),)
        )


@pytest.mark.parametrize(
    ("name", "paper_millions", "tolerance"),
    [
        ("20,4,8", 0.28, 0.01),  # Fig. 2
        ("29,8,8", 0.86, 0.01),  # Table 1
        ("29,64,8", 34.4, 0.35),  # Table 1 (to 1%: the paper rounds and may use 10 classes)
    ],
)
def test_parameter_counts_match_the_paper(name, paper_millions, tolerance):
    net = models.Network(get_architecture(name), num_classes=100, fan_in=4)
    count = _param_count(net)
    assert abs(count / 1e6 - paper_millions) <= tolerance, count
