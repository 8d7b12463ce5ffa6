"""Start-up of a multi-process job: detection, argument checks, one-process behaviour."""

import pytest

from mcjax import parallel
from mcjax.training import distributed


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, True),
        ({"SLURM_NTASKS": "16"}, False),  # not inside a job
        ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_cluster_detection(environ, expected):
    assert distributed.is_cluster_environment(environ) is expected


@pytest.mark.parametrize(
    ("mode", "kwargs", "message"),
    [
        ("sometimes", {}, "must be one of"),
        ("auto", {"coordinator_address": "h:1"}, "go together"),
        ("on", {"num_processes": 2, "process_id": 0}, "go together"),
        ("auto", {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "not in"),
        ("off", {"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}, "off"),
    ],
)
def test_bad_arguments_are_refused_before_joining(mode, kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(mode, **kwargs)


def test_one_process_needs_no_collectives(monkeypatch):
    for name in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize("auto") is False
    assert distributed.initialize("off") is False
    assert distributed.any_process(True) and not distributed.any_process(False)
    assert distributed.check_same_config({"seed": 0}, "runs/x") == []
    mesh = parallel.make_mesh()
    line = distributed.describe(mesh)
    assert line.startswith("process 0 of 1") and "mesh data=1" in line
    assert parallel.process_rows(mesh, 12) == slice(0, 12)
