"""Data parallelism: N simulated devices compute what one device computes."""

import json
import os
import subprocess
import sys

import jax
import pytest

from mcjax import parallel

HERE = os.path.dirname(os.path.abspath(__file__))


def test_eight_devices_match_one_device():
    # A fresh process: the simulated device count is fixed when JAX starts.
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "parallel_check.py"), "8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert diffs["devices"] == 8
    for key, value in diffs.items():
        if key.endswith(("/params", "/batch_stats", "/masks", "/loss")):
            assert value < 1e-5, (key, value)
    # The masks moved (phase 1), so a gradient N times too large would have shown.
    assert diffs["learn/masks_moved"] > 1e-3
    assert diffs["fixed/masks_moved"] == 0.0


def test_batch_that_does_not_divide_over_the_devices_is_refused():
    mesh = parallel.make_mesh(jax.devices()[:1])
    parallel.check_batch_divides(6, mesh)
    fake = type("Mesh", (), {"devices": type("D", (), {"size": 4})()})()
    with pytest.raises(ValueError, match="does not divide over the 4 devices"):
        parallel.check_batch_divides(6, fake)
