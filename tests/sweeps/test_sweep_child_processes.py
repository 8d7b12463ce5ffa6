"""How the local sweep starts its runs, where the process is the subject: no fork
warning once JAX is running, and no run started for a sweep that is gone. (That a run
gets SIGTERM when its sweep is killed is tests/sweeps/test_sweep.py's
test_killing_the_sweep_stops_its_run_cleanly; tests/support/fake_main.py stands in for
python -m mcjax.main.)"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.py")
FAKE_MAIN = str(REPO / "tests" / "support" / "fake_main.py")

# A sweep process as python -m mcjax.sweep is one: JAX imported and its CPU backend
# started (planning does that), then the runs started one after another.
_DRIVER = f"""
import sys
import jax
jax.devices()
from mcjax.sweeps import local, plan
sweep = plan.Sweep(sys.argv[1], {DIGITS!r}, {{}}, [], [0])
runs = plan.plan(sweep)
sys.exit(local.run_all(sweep, runs, command=lambda a: [sys.executable, {FAKE_MAIN!r}, *a]))
"""


def _driver(workdir, mode: str) -> subprocess.Popen:
    env = {**os.environ, "FAKE_MAIN_MODE": mode, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-W", "always", "-c", _DRIVER, str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_starting_runs_after_jax_prints_no_fork_warning(tmp_path):
    driver = _driver(tmp_path, "finish")
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    assert out.count("  done: test accuracy") == 1
    assert "fork" not in err, err


def test_a_run_is_not_started_when_its_sweep_is_already_gone(tmp_path):
    # The helper asks for the parent-death signal, then checks that the parent is the
    # one it was given: here it is not, as if the sweep had died just before.
    helper = REPO / "mcjax" / "sweeps" / "stop_with_parent.py"
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    done = subprocess.run(
        [sys.executable, "-I", str(helper), str(os.getpid() + 10**6), *command], timeout=60
    )
    assert done.returncode == -15 and not marker.exists()
    done = subprocess.run(
        [sys.executable, "-I", str(helper), str(os.getpid()), *command], timeout=60
    )
    assert done.returncode == 0 and marker.exists()
