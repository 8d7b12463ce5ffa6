"""Parameter and FLOP counts against independent counts of the real computation."""

import json

import jax
import jax.numpy as jnp
import pytest
from support.entry_points import run_module

from configs import cifar100, imagenet
from mcjax import cost_table, costs, masks, models
from mcjax.architectures import get_architecture


def _conv_and_dot_flops(jaxpr) -> int:
    """2 x MACs of every convolution and matmul in a jaxpr, outside custom_vjp calls."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            out = eqn.outvars[0].aval
            kh, kw, cin_per_group, _ = rhs.shape  # HWIO
            total += 2 * out.size * kh * kw * cin_per_group
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            k = 1
            for d in contract[0] if isinstance(contract[0], tuple) else contract:
                k *= lhs.shape[d]
            total += 2 * eqn.outvars[0].aval.size * k
        elif name.startswith("custom_vjp"):
            continue  # the mask aggregation is not counted
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
            total += _conv_and_dot_flops(sub)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                total += _conv_and_dot_flops(inner)
    return total


@pytest.mark.parametrize(
    "arch_name, connectivity, size, per_branch_bn",
    [
        ("20,2,4", "learned", 16, False),
        ("20,2,4", "full", 16, False),
        ("20,2,4", "full", 16, True),
        ("11,4,2", "random", 24, False),
    ],
)
def test_counts_match_the_traced_network(arch_name, connectivity, size, per_branch_bn):
    arch = get_architecture(arch_name)
    net = models.Network(
        arch,
        num_classes=7,
        connectivity=connectivity,
        fan_in=2,
        branch_impl="loop",
        full_per_branch_bn=per_branch_bn,
    )
    variables = jax.eval_shape(lambda: models.init(jax.random.key(0), net))
    # A K-hot connectivity (apply refuses others); the counts depend on shapes only.
    conn = None if connectivity == "full" else masks.top_k(jnp.ones(net.masks_shape), net.fan_in)
    images = jnp.zeros((1, size, size, 3))

    def forward(params, stats):
        return models.apply(net, params, stats, images, connectivity=conn, train=False)[0]

    jaxpr = jax.make_jaxpr(forward)(variables["params"], variables["batch_stats"]).jaxpr
    predicted = costs.network_costs(
        arch,
        image_size=size,
        num_classes=7,
        per_block_inputs=connectivity != "full",
        per_branch_bn=net.per_branch_bn3,
    )
    assert predicted["flops_per_image"] == _conv_and_dot_flops(jaxpr)
    assert predicted["params"] == costs.count_params(variables["params"])


@pytest.mark.parametrize(
    "config_file, arch",
    [("configs/cifar100.py", "29,64,8"), ("configs/imagenet.py", "resnext50_32x4d")],
)
def test_summary_command_json(config_file, arch):
    ran = run_module(
        "mcjax.cost_table", [f"--config={config_file}", f"--config.model.arch={arch}", "--json"]
    )
    assert ran.status == 0, ran.err
    out = json.loads(ran.out)
    assert isinstance(out["params_train"], int) and out["flops_per_image"] > 0
    assert len(out["modules"]) == get_architecture(arch).num_modules + 2


def test_summary_table_and_bad_arch():
    config = cifar100.get_config()
    config.model.arch = "20,4,8"
    table = cost_table.format_table(cost_table.summarize(config))
    assert "module 6" in table and "params_train = 0.28M" in table
    ran = run_module(
        "mcjax.cost_table", ["--config=configs/cifar100.py", "--config.model.arch=21,4,8"]
    )
    assert ran.status == 2 and "depth" in ran.err


def test_cost_table_runs_outside_the_repository_and_shows_the_stem_stride(tmp_path):
    ran = run_module("mcjax.cost_table", ["--json"], cwd=tmp_path)
    assert ran.status == 0, ran.err
    assert json.loads(ran.out)["modules"][0]["stride"] == 1  # the CIFAR stem

    config = imagenet.get_config()
    config.model.stem = "imagenet"
    stem = cost_table.summarize(config)["modules"][0]
    size = int(config.data.image_size)
    assert stem["name"] == "stem" and stem["stride"] == 4  # stride-2 conv, stride-2 pool
    assert stem["resolution"] == size // stem["stride"]


@pytest.mark.parametrize(
    "arch_name, per_branch, resnext",
    [("20,4,8", "0.28M", "0.27M"), ("29,8,8", "0.86M", "0.84M")],
)
def test_params_train_of_table_1_count_per_branch_bns(arch_name, per_branch, resnext):
    """The paper's Params-Train (Table 1, CIFAR-100) is the same for every mode, and
    matches per-branch last BNs; ResNeXt's one BN per module has fewer."""

    def millions(**kw):
        count = costs.network_costs(
            get_architecture(arch_name), image_size=32, num_classes=100, **kw
        )["params"]
        return f"{count / 1e6:.2f}M"

    assert millions(per_block_inputs=True) == per_branch
    assert millions(per_block_inputs=False, per_branch_bn=True) == per_branch
    assert millions(per_block_inputs=False) == resnext
