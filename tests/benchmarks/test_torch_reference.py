"""benchmarks/torch_reference.py: the public ResNeXt form in PyTorch, the port of mcjax's
``full`` weights onto it, and torchvision's ResNeXt as the ImageNet-shape anchor.

Skipped without PyTorch (the ``bench`` extra); the torchvision test also without torchvision.
"""

import dataclasses
import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mcjax import architectures, models  # noqa: E402

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "torch_reference.py"
_SPEC = importlib.util.spec_from_file_location("torch_reference", _PATH)
tr = importlib.util.module_from_spec(_SPEC)
sys.modules["torch_reference"] = tr  # dataclasses look their module up there
_SPEC.loader.exec_module(tr)
# The timing harness the benchmark scripts share (benchmarks/harness.py).
_HARNESS = importlib.util.spec_from_file_location("harness", _PATH.parent / "harness.py")
harness = importlib.util.module_from_spec(_HARNESS)
_HARNESS.loader.exec_module(harness)

SMALL = "11,4,4"  # one module per stage, C = 4: every kind of module (projections included)
IMAGES = np.random.default_rng(3).standard_normal((4, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("name", architectures.PAPER_ARCHITECTURES)
def test_architecture_tables_match_mcjax(name):
    ours, theirs = tr.architecture(name), architectures.get_architecture(name)
    assert (ours.stem, ours.stem_channels) == (theirs.stem, theirs.stem_channels)
    assert [dataclasses.astuple(m) for m in ours.modules] == [
        dataclasses.astuple(m) for m in theirs.modules
    ]


@pytest.mark.parametrize("arch", ["20,4,8", "29,8,8"])
def test_counts_match_hand_formula_layout_and_flop_counter(arch):
    model = tr.build_model(arch, 100)
    assert tr.count_params(model) == tr.expected_params(arch, 100)
    # The mcjax layout the port reads holds exactly as many scalars (BN statistics aside).
    params, _ = tr.random_full_variables(arch, 100)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == tr.count_params(model)
    assert tr.forward_flops(arch, image_size=32, num_classes=100) == tr.flop_count(model, 32)


def test_resnext29_8x64d_matches_the_published_count():
    # Xie et al. 2017, Table 7: ResNeXt-29 8x64d on CIFAR-10 has 34.4M parameters.
    assert round(tr.expected_params("29,64,8", 10) / 1e6, 1) == 34.4


@pytest.mark.parametrize("train", [False, True])
def test_grouped_form_equals_per_branch_form(train):
    torch.manual_seed(0)
    grouped = tr.randomize_(tr.build_model(SMALL, 10))
    per_branch = tr.build_model(SMALL, 10, formulation="per_branch")
    per_branch.load_state_dict(grouped.state_dict())
    images = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())
    a, b = tr.logits_pair(grouped, per_branch, images, train=train)
    assert tr.relative_error(a, b) < tr.TOLERANCE
    if train:  # both updated their running statistics from the same batch statistics
        for (key, x), (_, y) in zip(
            grouped.state_dict().items(), per_branch.state_dict().items(), strict=True
        ):
            if key.endswith(("running_mean", "running_var")):
                assert tr.relative_error(x, y) < tr.TOLERANCE, key


@pytest.mark.parametrize("train", [False, True])
def test_port_matches_per_branch_jax_forward(train):
    params, stats = tr.random_full_variables(SMALL, 10)
    expected = tr.agreed_layout_logits(SMALL, params, stats, IMAGES, train=train)
    got = tr.ported_logits(SMALL, params, stats, IMAGES, train=train)
    assert tr.relative_error(got, expected) < tr.TOLERANCE


@pytest.mark.parametrize("train", [False, True])
def test_port_matches_mcjax_full(train):
    net = models.Network(architectures.get_architecture(SMALL), num_classes=10, connectivity="full")
    variables = models.init(jax.random.key(0), net)
    if variables["params"]["modules"][0]["bn3"]["scale"].ndim == 2:
        pytest.skip("mcjax full still has one BN3 per branch; the port is for ResNeXt's form")
    params, stats = tr.perturbed_variables(variables["params"], variables["batch_stats"])
    expected, _ = models.apply(net, params, stats, IMAGES, connectivity=None, train=train)
    got = tr.ported_logits(SMALL, params, stats, IMAGES, train=train)
    assert tr.relative_error(got, expected) < tr.TOLERANCE


def test_port_rejects_one_bn3_per_branch():
    params, stats = tr.random_full_variables(SMALL, 10)
    module = params["modules"][0]
    c, c_out = module["conv3"].shape[0], module["conv3"].shape[-1]
    module["bn3"] = {k: np.ones((c, c_out), np.float32) for k in ("scale", "bias")}
    with pytest.raises(ValueError, match="one BN3"):
        tr.port_mcjax_full(SMALL, params, stats)


def test_resnext50_32x4d_is_torchvision_s():
    pytest.importorskip("torchvision")
    reference = tr.torchvision_model("resnext50_32x4d", 1000)
    assert tr.count_params(reference) == tr.TORCHVISION_PARAMS["resnext50_32x4d"] == 25_028_904
    ours = tr.randomize_(tr.build_model("resnext50_32x4d", 1000))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    reference.load_state_dict(ours.state_dict())
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for train in (False, True):
        assert tr.relative_error(*tr.logits_pair(ours, reference, images, train=train)) < 1e-5
    assert tr.baseline_model("resnext50_32x4d", 1000)[1] == "torchvision"
    # torchvision documents 4.23 G multiply-adds at 224x224.
    flops = tr.forward_flops("resnext50_32x4d", image_size=224, num_classes=1000)
    assert tr.flop_count(reference, 224) == flops and round(flops / 2e9, 2) == 4.23


def test_benchmark_reports_each_task_s_fastest_setting():
    result = harness.torch_benchmark(
        SMALL, batch=2, steps=1, warmup=0, image_size=8, num_classes=10, modes=("eager",)
    )
    settings = result["settings"]
    assert [(s["layout"], s["mode"]) for s in settings] == [
        ("channels_last", "eager"),
        ("contiguous", "eager"),
    ]
    for task in ("train", "infer"):
        best = max(settings, key=lambda s, task=task: s[f"{task}_images_per_s"])
        assert result[f"{task}_images_per_s"] == best[f"{task}_images_per_s"]
        assert result[f"{task}_setting"] == f"{best['layout']}+eager"
    assert np.isfinite(settings[0]["final_loss"])
    with pytest.raises(ValueError, match="layouts"):
        harness.torch_benchmark(SMALL, batch=2, steps=1, warmup=0, layouts=("nchw",))
