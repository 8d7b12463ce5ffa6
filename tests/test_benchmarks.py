"""The benchmark scripts run where only the GPU image's packages are (no ml_collections,
no tensorflow-datasets), and benchmarks/gpu.sh parses and refuses bad usage."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")

# Makes any import of the named packages fail, as on a machine that lacks them.
_BLOCK = """
import importlib.abc, sys
BLOCKED = {"ml_collections", "tensorflow_datasets", "tensorflow"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
sys.path.insert(0, BENCHMARKS)
import throughput, gpu_table
print("imported")
"""


def test_benchmarks_import_without_ml_collections_or_tfds():
    result = subprocess.run(
        [sys.executable, "-c", f"BENCHMARKS = {BENCHMARKS!r}\n" + _BLOCK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_gpu_sh_parses():
    result = subprocess.run(["bash", "-n", os.path.join(BENCHMARKS, "gpu.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_gpu_sh_passes_shellcheck():
    result = subprocess.run(
        ["shellcheck", os.path.join(BENCHMARKS, "gpu.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("args", [["--tiny"], ["a", "b"]])
def test_gpu_sh_refuses_bad_usage(args):
    result = subprocess.run(
        [os.path.join(BENCHMARKS, "gpu.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage: " in result.stderr
