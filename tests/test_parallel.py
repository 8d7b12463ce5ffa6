"""Data parallelism: N simulated devices compute what one device computes."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# float32 unit roundoff. A sum of n terms in another order differs by at most about
# n * u times the sum of their magnitudes (Higham's gamma_n); splitting a batch over
# devices reorders every batch reduction, of which the longest is a BN statistic over
# batch x height x width. One step moves the parameters by such sums, so after `steps`
# steps the state may differ by up to steps * n * u relative to the norm of the whole
# state (never relative to one near-zero element). A real error (a gradient N times
# too large, unsynchronised BN) is orders of magnitude above it.
UNIT_ROUNDOFF = 2.0**-24


def reordering_bound(steps: int, batch: int, height: int, width: int) -> float:
    return steps * batch * height * width * UNIT_ROUNDOFF


@pytest.mark.parametrize("devices", [2, pytest.param(8, marks=pytest.mark.slow)])
def test_n_devices_match_one_device(devices):
    from test_faults import _ENV

    # A fresh process: the simulated device count is fixed when JAX starts. The tests'
    # subprocess environment (faster compiles) holds for both sides of each comparison.
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "parallel_check.py"), str(devices)],
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert diffs["devices"] == devices
    bound = reordering_bound(steps=2, batch=16, height=8, width=8)  # parallel_check.run
    for key, value in diffs.items():
        if key.endswith(("/params", "/batch_stats", "/masks", "/loss")):
            assert value < bound, (key, value, bound)
    # The masks moved (phase 1): a mask gradient N times too large would have moved them
    # (N - 1) times further than the one-device run, far outside the bound.
    assert (diffs["devices"] - 1) * diffs["learn/masks_moved"] > 10 * bound
    assert diffs["fixed/masks_moved"] == 0.0


@pytest.mark.slow
def test_training_on_two_devices_matches_one_device(tmp_path):
    """``python -m mcjax.main`` with 2 simulated devices vs 1: same run, up to low bits."""
    import numpy as np
    from test_faults import _ENV, _cli, tiny_flags

    results = {}
    for devices in (1, 2):
        workdir = tmp_path / f"devices{devices}"
        env = {**_ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        # One step per phase: over more steps of this tiny, unstable run the low-bit
        # differences grow chaotically (6% in a bias after 22 steps; 1.7e-6 after 4).
        # random connectivity: low bits cannot flip a top-K choice of the masks either.
        flags = tiny_flags(
            "--config.phase_epochs=(0.006,0.006,0.006,0.006)",
            "--config.model.connectivity=random",
        )
        subprocess.run(
            _cli("--workdir", str(workdir), *flags),
            cwd=os.path.dirname(HERE),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        with open(workdir / "summary.json") as f:
            summary = json.load(f)
        with np.load(workdir / "pruned_model" / "arrays.npz") as arrays:
            results[devices] = (summary, {k: arrays[k].astype(np.float64) for k in arrays.files})
    (one, arrays_one), (two, arrays_two) = results[1], results[2]
    assert one["test_examples"] == two["test_examples"] == 360
    assert sorted(arrays_one) == sorted(arrays_two)
    # Relative to the norm of the whole exported state (4 steps of 8 digits of 8x8).
    difference = np.sqrt(sum(np.sum((arrays_two[k] - v) ** 2.0) for k, v in arrays_one.items()))
    norm = np.sqrt(sum(np.sum(v**2.0) for v in arrays_one.values()))
    bound = reordering_bound(steps=4, batch=8, height=8, width=8)
    assert difference / norm < bound, (difference / norm, bound)
