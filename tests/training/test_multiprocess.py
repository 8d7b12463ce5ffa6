"""Two processes joined by ``jax.distributed`` (CPU collectives) through ``launch/local.sh``.

They must train exactly what one process with two devices trains, write every output
once, restore together, stop together on SIGTERM, and refuse to start with different
configs.
"""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from support import REPO_ROOT, processes, reordering_bound, tiny

LOCAL_SH = str(REPO_ROOT / "launch" / "local.sh")


# One step per phase: all four phases, the freeze of the learned connectivity and the
# pruning, in a few seconds of training (compiles dominate).
FLAGS = tiny.tiny_flags(
    "--config.phase_epochs=(0.006,0.006,0.006,0.006)", "--config.model.fan_in=2"
)


def _local(num_processes: int, workdir, flags=FLAGS, **popen) -> subprocess.Popen:
    env = processes.env(PYTHON=sys.executable)
    return subprocess.Popen(
        [LOCAL_SH, str(num_processes), "--workdir", str(workdir), *flags],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _finish(process: subprocess.Popen, timeout: float = 1200) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _outputs(workdir) -> tuple[dict, dict]:
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    with np.load(workdir / "pruned_model" / "arrays.npz") as arrays:
        return summary, {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def one_process_two_devices(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_process")
    env = processes.env(JAX_NUM_CPU_DEVICES="2")
    processes.run_main(["--workdir", str(workdir), *FLAGS], env=env, check=True)
    return workdir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes")
    status, out, err = _finish(_local(2, workdir))
    assert status == 0, err[-3000:]
    return workdir, out, err


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(one_process_two_devices, two_processes):
    workdir, out, err = two_processes
    reference, reference_arrays = _outputs(one_process_two_devices)
    summary, arrays = _outputs(workdir)
    assert summary["test_examples"] == reference["test_examples"] == 360
    assert summary["connectivity"] == "learned" and summary["steps"] == 4
    assert arrays.keys() == reference_arrays.keys()
    # Relative to the norm of the whole exported state (see support.reordering_bound):
    # the collectives of two processes may sum in another order than one process's.
    difference = np.sqrt(
        sum(np.sum((arrays[k].astype(np.float64) - v) ** 2) for k, v in reference_arrays.items())
    )
    norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in reference_arrays.values()))
    assert difference / norm < reordering_bound(steps=4, batch=8, height=8, width=8)
    # Both processes took part; the start-up log names each one and the mesh.
    for index in (0, 1):
        assert f"[{index}] " in err
        assert f"process {index} of 2" in err
    assert "mesh data=2" in err
    # Only process 0 writes: one summary on stdout, the metrics of one run.
    assert out.count("state digest") == 1 and "[0]   state digest" in out
    assert _metric_records(workdir) == _metric_records(one_process_two_devices)


def _metric_records(workdir) -> list[tuple[int, list[str]]]:
    with open(workdir / "metrics.jsonl") as f:
        return [(r["step"], sorted(r)) for r in map(json.loads, f)]


@pytest.mark.slow
def test_two_processes_resume_together_from_their_checkpoint(two_processes, tmp_path):
    """A finished workdir run again: both processes restore the last step and agree."""
    workdir, _, _ = two_processes
    digest = _outputs(workdir)[0]["state_digest"]
    status, _, err = _finish(_local(2, workdir))
    assert status == 0, err[-3000:]
    assert err.count("Resumed from step 4") == 2
    assert _outputs(workdir)[0]["state_digest"] == digest


def test_processes_with_different_configs_refuse_to_start(tmp_path):
    # Process 1 gets another seed: `--config.seed` is appended only for it, by a wrapper.
    wrapper = tmp_path / "python_with_seed.sh"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do [[ $a == --process_id=1 ]] && set -- "$@" --config.seed=7; done\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = processes.env(PYTHON=str(wrapper))
    process = subprocess.run(
        [LOCAL_SH, "2", "--workdir", str(tmp_path / "run"), *FLAGS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 2, process.stderr[-3000:]
    for index in (0, 1):
        assert f"[{index}] error: process 1 was started with another config" in process.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_step_and_they_resume(tmp_path):
    """SIGTERM to the launcher: both save at the same step, exit 75, and resume to the
    state of the uninterrupted run."""
    # 5 steps per phase
    flags = tiny.tiny_flags(
        "--config.phase_epochs=(0.03,0.03,0.03,0.03)", "--config.model.fan_in=2"
    )
    status, _, err = _finish(_local(2, tmp_path / "whole", flags))
    assert status == 0, err[-3000:]
    workdir = tmp_path / "interrupted"
    process = _local(2, workdir, flags)
    deadline = time.monotonic() + 900
    while not (workdir / "checkpoint_sums" / "3.sha256.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    status, _, err = _finish(process)
    assert status == 75, err[-3000:]
    marker = "stopped after step "
    stopped = [line.split(marker)[1].split()[0] for line in err.splitlines() if marker in line]
    assert len(stopped) == 2 and len(set(stopped)) == 1, stopped  # one step, both processes
    assert int(stopped[0]) < 20
    status, _, err = _finish(_local(2, workdir, flags))
    assert status == 0, err[-3000:]
    whole_digest = _outputs(tmp_path / "whole")[0]["state_digest"]
    assert _outputs(workdir)[0]["state_digest"] == whole_digest
