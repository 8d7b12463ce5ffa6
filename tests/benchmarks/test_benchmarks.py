"""The benchmark scripts run where only the GPU image's packages are (no ml_collections,
no tensorflow-datasets), and benchmarks/gpu.sh parses and refuses bad usage."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from support import REPO_ROOT

ROOT = str(REPO_ROOT)
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


def _gpu_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_table", os.path.join(BENCHMARKS, "gpu_table.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setting(layout, mode, train, infer):
    return {
        "layout": layout,
        "mode": mode,
        "train_images_per_s": train,
        "train_ms": 1000 * 128 / train,
        "infer_images_per_s": infer,
        "infer_ms": 1000 * 128 / infer,
    }


def test_gpu_table_report_takes_fastest_setting_and_picked_formulation(tmp_path):
    gpu_table = _gpu_table()
    flops = 10**9
    records = [
        {"kind": "peak", "framework": "torch", "tflops": 800.0},
        {"kind": "peak", "framework": "jax", "tflops": 700.0},
        # Eager: channels_last trains faster, contiguous infers faster; compile beats both.
        {
            "kind": "torch",
            "arch": "29,8,8",
            "batch": 128,
            "formulation": "grouped",
            "forward_flops": flops,
            "settings": [
                _setting("channels_last", "eager", 1000.0, 5000.0),
                _setting("contiguous", "eager", 800.0, 6000.0),
            ],
        },
        {
            "kind": "torch",
            "arch": "29,8,8",
            "batch": 128,
            "formulation": "grouped",
            "forward_flops": flops,
            "settings": [_setting("channels_last", "compile", 2000.0, 4000.0)],
        },
        # mcjax: loop is picked for full although grouped was measured (and faster) too.
        {"kind": "pick", "arch": "29,8,8", "connectivity": "full", "batch": 128,
         "step_ms": {"grouped": 64.0, "loop": 80.0}, "picked": "loop"},
    ]  # fmt: skip
    for impl, step_ms in (("grouped", 256.0), ("loop", 128.0)):
        records.append(
            {"kind": "mcjax", "arch": "29,8,8", "batch": 128, "connectivity": "full",
             "impl": impl, "images_per_s": 128 / step_ms * 1000, "step_ms": step_ms,
             "tflops": 1.0, "compile_s": 10.0}
        )  # fmt: skip
    records.append(
        {"kind": "mcjax", "arch": "29,8,8", "batch": 128, "connectivity": "learned",
         "impl": "loop", "images_per_s": 500.0, "step_ms": 256.0, "tflops": 0.6,
         "compile_s": 12.0}
    )  # fmt: skip
    with open(tmp_path / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    rows = {
        line.split("|")[3].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
        for line in gpu_table.report(str(tmp_path)).splitlines()
        if line.startswith("| 29,8,8")
    }
    torch_row = rows["PyTorch (public form)"]
    assert torch_row[3] == "grouped channels_last+compile" and torch_row[4] == "2,000"
    assert torch_row[9] == "6,000"  # inference: its own fastest setting
    # 3 x 1 GFLOP x 2000 img/s = 6 TFLOP/s = 0.75% of the larger peak.
    assert torch_row[6] == "6" and torch_row[7] == "0.8"
    full = rows["mcjax full"]
    assert full[3] == "loop" and full[5] == "128.0" and full[10] == "0.50"
    assert rows["mcjax learned"][11] == "2.00"


def test_gpu_table_budget_predicts_from_the_longest_task_so_far():
    budget = _gpu_table().Budget(deadline=time.time() + 100, first_guess_s=10)
    assert budget.allows("a") and budget.allows("a", factor=5)
    assert not budget.allows("a", factor=20)
    budget.record("a", 60)
    budget.record("b", 5)
    assert budget.allows("b", factor=10)  # its own last duration: 50 s
    assert not budget.allows("unseen", factor=2)  # as long as the longest (60 s), twice
    assert _gpu_table().Budget(deadline=None, first_guess_s=1e9).allows("x")
