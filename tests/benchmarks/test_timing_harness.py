"""benchmarks/harness.py, floor.py, op_classes.py and api_timing.py: the pieces of the CPU
tables that can be checked without timing anything."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import costs, masks
from mcjax.architectures import get_architecture

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks")


def _load(name):
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)  # the scripts import each other by name
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_interleave_runs_every_variant_once_per_round_alternating_the_order():
    harness = _load("harness")
    calls = []

    def stepper(name):
        def step():
            calls.append(name)
            return float(len(calls))

        return step

    times = harness.interleave({n: stepper(n) for n in "abc"}, rounds=3, warmup=1)
    assert calls == list("abc" + "abc" + "cba" + "abc")  # warm-up, then alternating rounds
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert times["a"] == [4.0, 9.0, 10.0]  # only the timed rounds, in order
    assert harness.median_ms([0.001, 0.003, 0.002]) == pytest.approx(2.0)


@pytest.mark.parametrize("arch", ["20,4,8", "29,8,8"])
def test_floor_counts_the_costs_flops_and_more_bytes_for_the_masked_modes(arch):
    floor = _load("floor")
    full, learned = floor.table(arch, ["full", "learned"], batch=4)
    forward = costs.network_costs(
        get_architecture(arch), image_size=32, num_classes=100, per_block_inputs=False
    )["flops_per_image"]
    assert full["flops"] == 3 * 4 * forward
    assert learned["flops"] > full["flops"]
    # The masked modes' C streams of width c_out: several times full's bytes.
    assert 3 < learned["bytes"] / full["bytes"] < 8
    assert sum(learned["bytes_by_part"].values()) == pytest.approx(learned["bytes"])
    assert learned["bytes_by_part"]["mask aggregation"] > 0
    assert "mask aggregation" not in full["bytes_by_part"]
    # Bytes and FLOPs scale with the batch (the optimizer's update does not).
    double = floor.table(arch, ["learned"], batch=8)[0]
    assert double["flops"] == 2 * learned["flops"]
    assert 1.9 < double["bytes"] / learned["bytes"] < 2.0
    assert floor.floor_ms(2e9, 1e9, bandwidth_gbs=2.0, matmul_gflops=1.0) == pytest.approx(2e3)


def test_op_classes_tell_convolutions_products_weight_gradients_and_the_mix_apart():
    op_classes = _load("op_classes")
    x = jnp.ones((2, 8, 8, 4))

    def loss(kernel, weight, real):
        h = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        y = jnp.einsum("nhwc,cd->nhwd", h, weight)
        stacked = jnp.stack([y, 2 * y])  # two "blocks"
        mixed = masks.aggregate(real, real, stacked)
        return jnp.sum(jnp.sin(mixed))

    args = (jnp.ones((3, 3, 4, 4)), jnp.ones((4, 6)), jnp.ones((2, 2)))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    hlo = op_classes.Hlo(compiled.as_text())
    classes = {op_classes.classify_instruction(name, hlo) for name in hlo.instructions}
    assert "3x3 conv forward" in classes
    assert "mask aggregation (mix and its gradients)" in classes
    assert classes & {"weight gradients (convolutions and products)", "3x3 conv backward"}
    assert op_classes.classify_instruction("no such operation", hlo) is None
    # Per-class totals add up to the operations given (runtime events are left out).
    per_op = {name: 1000.0 for name in list(hlo.instructions)[:5]}
    result = op_classes.classify({**per_op, "ThunkExecutor::Execute": 5e6}, compiled.as_text())
    assert result["total_ms"] == pytest.approx(len(per_op))


def test_the_public_api_step_trains_and_donates_its_state():
    api_timing = _load("api_timing")
    step, state, images, labels = api_timing.build_step("11,2,4", "learned", batch=2, fan_in=2)
    masks_before = np.asarray(state[1]["masks"])
    for _ in range(2):  # the zero head passes no gradient back in the first step
        state, loss = step(state, images, labels)
    assert np.isfinite(float(loss)) and int(state[0]) == 2
    # The straight-through gradient moved the real-valued masks.
    assert not np.array_equal(np.asarray(state[1]["masks"]), masks_before)
