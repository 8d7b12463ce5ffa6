"""python -m mcjax.sweep against what a shared cluster throws at it, in-process: a
sweep too large to plan, names and paths the file system cannot hold, values that are
one value, the resume rule shared with the training program, broken result files, a
second sweep on the same directory, and links planted where the sweep writes.
(tests/support/fake_main.py stands in for python -m mcjax.main where runs are started.)"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tracemalloc

import pytest

from mcjax import sweep as sweep_cli
from mcjax.sweeps import aggregate, grid, local, plan
from mcjax.sweeps.lock import LOCK_NAME, SweepLock
from mcjax.sweeps.resolve import SweepError, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.py")
FAKE_MAIN = str(REPO / "tests" / "support" / "fake_main.py")


def _sweep(workdir, axes=(), seeds=(0,), **overrides) -> plan.Sweep:
    return plan.Sweep(str(workdir), DIGITS, dict(overrides), list(axes), list(seeds))


def _fake_main(monkeypatch, mode: str = "finish") -> list:
    """Runs started by the sweep are tests/support/fake_main.py; returns the list of their args."""
    launched = []

    def command(args):
        launched.append(list(args))
        return [sys.executable, FAKE_MAIN, *args]

    monkeypatch.setattr(local, "main_command", command)
    monkeypatch.setenv("FAKE_MAIN_MODE", mode)
    return launched


def _path_max() -> int:
    return os.pathconf("/", "PC_PATH_MAX")


def _errors(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# --- Size ---------------------------------------------------------------------------


def test_the_number_of_runs_is_printed_first_and_bounded(tmp_path, capsys):
    args = ["--workdir", str(tmp_path / "sw"), "--grid", "model.fan_in=1,2", "--seeds", "2"]
    assert sweep_cli.main([*args, "--dry_run", "--max_runs", "3"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"planning 4 runs (2 grid points x 2 seeds) in {tmp_path}/sw"]
    assert err.splitlines() == [
        "error: the sweep has 4 runs (2 grid points x 2 seeds), more than --max_runs=3; "
        "pass --max_runs=4 to plan them all"
    ]
    assert sweep_cli.main([*args, "--dry_run", "--max_runs", "4"]) == 0
    first, *commands = capsys.readouterr().out.splitlines()
    assert first.startswith("planning 4 runs") and len(commands) == 4
    assert not (tmp_path / "sw").exists()


def test_a_sweep_past_ten_thousand_runs_is_refused_by_default(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--seeds", "10001", "--dry_run"]
    assert sweep_cli.main(argv) == 2
    assert _errors(capsys) == [
        "error: the sweep has 10,001 runs (1 grid point x 10,001 seeds), more than "
        "--max_runs=10000; pass --max_runs=10001 to plan them all"
    ]


@pytest.mark.parametrize(
    "argv, count",
    [
        (["--seeds", "100000000"], "100,000,000 runs (1 grid point x 100,000,000 seeds)"),
        (
            ["--grid", "mask_learning_rate=" + ",".join(f"0.{i}" for i in range(1, 10002))],
            "up to 10,001 runs (10,001 grid points x 1 seed)",
        ),
    ],
)
def test_a_huge_sweep_is_refused_before_anything_is_resolved(
    tmp_path, monkeypatch, capsys, argv, count
):
    def resolve(*args, **kwargs):
        raise AssertionError("a config was resolved")

    monkeypatch.setattr(plan, "load_config", resolve)
    tracemalloc.start()
    try:
        status = sweep_cli.main(["--workdir", str(tmp_path), "--dry_run", *argv])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: the sweep has {count}, more than --max_runs=10000")
    assert peak < 50 << 20  # nothing the size of the sweep was made


# --- Names and paths the file system cannot hold -------------------------------------


def test_a_run_name_over_255_bytes_is_refused_at_planning(tmp_path, capsys):
    value = "0.2" + "0" * 300 + "1"
    argv = ["--workdir", str(tmp_path), "--grid", f"mask_learning_rate={value},0.1", "--dry_run"]
    assert sweep_cli.main(argv) == 2
    (line,) = _errors(capsys)
    assert line.startswith("error: run mask_learning_rate=0.2000")
    assert f"its directory name is {len(f'mask_learning_rate={value},seed=0')} bytes" in line
    assert "more than the 255 the file system allows" in line


@pytest.mark.parametrize("shape", ["a long name", "a long path"])
def test_an_over_long_workdir_is_one_line(tmp_path, monkeypatch, capsys, shape):
    launched = _fake_main(monkeypatch)
    if shape == "a long name":
        workdir = tmp_path / ("a" * 300)
    else:
        workdir = tmp_path.joinpath(*["b" * 200] * (_path_max() // 200))
    assert sweep_cli.main(["--workdir", str(workdir)]) == 2
    (line,) = _errors(capsys)
    assert line.startswith("error: --workdir ")
    limit = "more than the 255" if shape == "a long name" else f"past the {_path_max()} bytes"
    assert limit in line
    assert not launched and os.listdir(tmp_path) == []


# --- Values and the resume rule --------------------------------------------------------


def test_grid_values_equal_after_parsing_are_one_run(tmp_path):
    axes = [grid.field_axis("model.fan_in", ["2", "02", "+2"])]
    runs = plan.plan(_sweep(tmp_path, axes, seeds=[0, 1]))
    assert [run.name for run in runs] == ["fan_in=2,seed=0", "fan_in=2,seed=1"]
    axes = [grid.field_axis("mask_learning_rate", ["0.1", "1e-1", ".10", "0.2"])]
    runs = plan.plan(_sweep(tmp_path, axes))
    assert [run.overrides for run in runs] == [
        {"mask_learning_rate": "0.1"},
        {"mask_learning_rate": "0.2"},
    ]


def test_resume_rule_is_the_training_programs(tmp_path):
    sweep = _sweep(tmp_path, [grid.field_axis("model.fan_in", ["2"])])
    (run,) = plan.plan(sweep)
    saved = load_config(DIGITS, {"model.fan_in": "2"}).to_dict()
    saved["seed"] = 0
    # Fields mcjax.main lets a resumed run change: the sweep resumes such a run too.
    saved["model"]["dtype"] = "bfloat16"
    saved["model"]["zero_init_residual"] = not saved["model"]["zero_init_residual"]
    saved["debug_inject_nan_at_step"] = 7
    os.makedirs(run.workdir)
    config_json = os.path.join(run.workdir, "config.json")
    with open(config_json, "w") as f:
        json.dump(saved, f)
    assert [r.status() for r in plan.plan(sweep)] == ["interrupted"]
    saved["model"]["fan_in"] = 3  # a field it refuses
    with open(config_json, "w") as f:
        json.dump(saved, f)
    with pytest.raises(SweepError, match=r"another config \(model.fan_in: 3 -> 2\)"):
        plan.plan(sweep)


# --- Broken files ---------------------------------------------------------------------

_BROKEN = ["", "{", '{"test_accuracy": 0.5, "params_tra', "[]", '{"test_accuracy": "high"}']


def _summary(accuracy: float) -> dict:
    return {
        "test_accuracy": accuracy,
        "params_train": 1000,
        "params_test": 900,
        "live_blocks_per_module": [2, 4],
        "steps": 1,
        "wall_seconds": 0.0,
    }


@pytest.mark.parametrize("content", [*_BROKEN, b"\xff\xfe\x00", "a directory"])
def test_a_broken_summary_means_not_finished(tmp_path, content):
    sweep = _sweep(tmp_path, seeds=[0, 1])
    runs = plan.plan(sweep)
    for run, accuracy in zip(runs, (0.5, 0.75), strict=True):
        os.makedirs(run.workdir)
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            json.dump({}, f)
        with open(os.path.join(run.workdir, "summary.json"), "w") as f:
            json.dump(_summary(accuracy), f)
    broken = pathlib.Path(runs[1].workdir) / "summary.json"
    broken.unlink()
    if content == "a directory":
        broken.mkdir()
    else:
        broken.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert [run.status() for run in runs] == ["finished", "interrupted"]
    (row,) = aggregate.collect(sweep, runs)["rows"]
    assert row["n"] == 1 and row["top1"]["values"] == [50.0]


def test_a_run_with_a_truncated_summary_is_rerun_and_reported(tmp_path, monkeypatch, capsys):
    argv = ["--workdir", str(tmp_path), "--seeds", "2"]
    launched = _fake_main(monkeypatch)
    assert sweep_cli.main(argv) == 0
    assert len(launched) == 2
    (tmp_path / "seed=1" / "summary.json").write_text('{"test_accuracy": 0.6, "par')
    capsys.readouterr()
    assert sweep_cli.main(["--workdir", str(tmp_path), "--report"]) == 0
    assert "| 1/2 |" in capsys.readouterr().out  # seed 1 has not finished
    with open(tmp_path / "results.json") as f:
        assert [r["status"] for r in json.load(f)["runs"]] == ["finished", "interrupted"]
    assert sweep_cli.main(argv) == 0  # reruns seed 1 only
    assert [a[1] for a in launched[2:]] == [f"--workdir={tmp_path / 'seed=1'}"]
    assert "| 2/2 |" in capsys.readouterr().out


@pytest.mark.parametrize("content", [*_BROKEN, '{"runs": 3}', '{"config": "x", "runs": [{}]}'])
def test_report_on_a_broken_sweep_json_is_one_line(tmp_path, capsys, content):
    (tmp_path / "sweep.json").write_text(content)
    assert sweep_cli.main(["--workdir", str(tmp_path), "--report"]) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: {tmp_path}/sweep.json is not a sweep's plan")


# --- One sweep per directory ----------------------------------------------------------

_HOLDER = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_sweep_on_the_same_directory_is_refused_naming_the_first(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--launcher", "slurm"]
    (tmp_path / "sweep.json").write_text("the first sweep's\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / LOCK_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert sweep_cli.main(argv) == 2
        (line,) = _errors(capsys)
        assert line.startswith(f"error: the sweep directory {tmp_path} is in use by another sweep")
        assert f"pid {holder.pid} on host {socket.gethostname()}" in line
        assert (tmp_path / "sweep.json").read_text() == "the first sweep's\n"
        assert not (tmp_path / "slurm").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The kernel released the lock of the killed sweep: nothing stale to delete.
    assert sweep_cli.main(argv) == 0
    assert (tmp_path / "slurm" / "sweep.sbatch").exists()
    with SweepLock(str(tmp_path)):  # and the finished sweep let go of it
        pass


def test_a_link_planted_as_the_sweep_lock_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "sw"
    workdir.mkdir()
    (workdir / LOCK_NAME).symlink_to(victim)
    assert sweep_cli.main(["--workdir", str(workdir), "--launcher", "slurm"]) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: cannot create the sweep's lock file {workdir}/{LOCK_NAME}")
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(workdir)) == [LOCK_NAME]


# --- Files written through planted links -----------------------------------------------


def test_sweep_files_are_not_written_through_planted_links(tmp_path, monkeypatch, capsys):
    _fake_main(monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "sw"
    os.makedirs(workdir / "seed=1")
    planted = ["sweep.json.tmp", "results.json.tmp", "table.md.tmp", "active_branches.png"]
    for name in [*planted, "seed=1/train.log"]:
        (workdir / name).symlink_to(victim)
    status = sweep_cli.main(["--workdir", str(workdir), "--seeds", "2"])
    assert status == 1  # seed=1 did not start: its log is a link
    assert victim.read_text() == "precious\n"
    out = capsys.readouterr().out
    assert f"seed=1: not started: cannot open {workdir}/seed=1/train.log" in out
    assert not (workdir / "active_branches.png").is_symlink()
    for name in ("sweep.json", "results.json", "table.md", "seed=0/train.log"):
        assert (workdir / name).is_file() and not (workdir / name).is_symlink(), name
