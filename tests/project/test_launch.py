"""The launch scripts parse, pass shellcheck where it is installed, and refuse bad usage."""

import os
import shutil
import subprocess

import pytest
from support import REPO_ROOT

LAUNCH = str(REPO_ROOT / "launch")
SCRIPTS = ["local.sh", "tpu_vm.sh", "slurm.sbatch"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses(name):
    result = subprocess.run(["bash", "-n", os.path.join(LAUNCH, name)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_passes_shellcheck(name):
    result = subprocess.run(
        ["shellcheck", os.path.join(LAUNCH, name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("args", [[], ["0"], ["two", "--workdir", "x"]])
def test_local_sh_needs_a_process_count(args):
    result = subprocess.run(
        [os.path.join(LAUNCH, "local.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage: " in result.stderr and "NUM_PROCESSES" in result.stderr


@pytest.mark.parametrize("args", [[], ["launch"], ["run"]])
def test_tpu_vm_sh_prints_its_usage(args):
    result = subprocess.run(
        [os.path.join(LAUNCH, "tpu_vm.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage: " in result.stderr and "create" in result.stderr
