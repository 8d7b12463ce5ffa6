"""python -m mcjax.sweep without training: grids, names, applicability, errors before
anything runs, aggregation, the SLURM script, and the process handling (with
tests/support/fake_main.py in place of mcjax.main). The real runs are in
test_sweep_runs.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from support import REPO_ROOT, SUPPORT_DIR, processes

from mcjax import sweep as sweep_cli
from mcjax.sweeps import aggregate, grid, local, plan, presets, slurm
from mcjax.sweeps.resolve import SweepError

DIGITS = str(REPO_ROOT / "configs" / "digits.py")
CIFAR100 = str(REPO_ROOT / "configs" / "cifar100.py")
FAKE_MAIN = str(SUPPORT_DIR / "fake_main.py")


def _sweep(workdir, axes, seeds=(0, 1), config=DIGITS, **overrides) -> plan.Sweep:
    return plan.Sweep(str(workdir), config, dict(overrides), axes, list(seeds))


@pytest.mark.parametrize(
    "text, field, values",
    [
        ("model.connectivity=full,learned", "model.connectivity", ["full", "learned"]),
        ("model.arch={20,4,8},{29,8,8}", "model.arch", ["{20,4,8}", "{29,8,8}"]),
        ("config.phase_epochs=(1,1,1,1),(2,1,1,1)", "phase_epochs", ["(1,1,1,1)", "(2,1,1,1)"]),
        ("model.arch='29,8,8'", "model.arch", ["'29,8,8'"]),
    ],
)
def test_grid_values_split_on_commas_outside_brackets(text, field, values):
    assert grid.parse_grid_flag(text) == (field, values)


@pytest.mark.parametrize("text", ["model.fan_in", "=1,2", "model.fan_in=1,,2", "model.arch={1,2"])
def test_bad_grid_flags_are_refused(text):
    with pytest.raises(ValueError):
        grid.parse_grid_flag(text)


def test_cross_product_order_and_one_field_per_axis():
    axes = [grid.field_axis("a", ["1", "2"]), grid.field_axis("b", ["x", "y", "x"])]
    assert grid.expand(axes) == [
        {"a": "1", "b": "x"},
        {"a": "1", "b": "y"},
        {"a": "2", "b": "x"},
        {"a": "2", "b": "y"},
    ]
    with pytest.raises(ValueError, match="two grid axes"):
        grid.expand([grid.field_axis("a", ["1"]), [{"a": "2", "b": "x"}]])


def test_fan_in_is_not_multiplied_for_full(tmp_path):
    axes = [
        grid.field_axis("model.connectivity", ["full", "learned"]),
        grid.field_axis("model.fan_in", ["1", "2"]),
    ]
    runs = plan.plan(_sweep(tmp_path, axes, **{"model.arch": "11,2,4"}))
    assert [r.name for r in runs] == [
        "connectivity=full,seed=0",
        "connectivity=full,seed=1",
        "connectivity=learned,fan_in=1,seed=0",
        "connectivity=learned,fan_in=1,seed=1",
        "connectivity=learned,fan_in=2,seed=0",
        "connectivity=learned,fan_in=2,seed=1",
    ]
    full, learned = runs[0], runs[5]
    assert full.describe["fan_in"] is None and full.describe["cardinality"] == 4
    assert learned.main_args(_sweep(tmp_path, axes, **{"model.arch": "11,2,4"})) == [
        f"--config={DIGITS}",
        f"--workdir={tmp_path / learned.name}",
        "--config.model.arch=11,2,4",
        "--config.model.connectivity=learned",
        "--config.model.fan_in=2",
        "--config.seed=1",
    ]


def test_every_problem_is_found_before_anything_runs(tmp_path):
    axes = [grid.field_axis("model.fanin", ["1"]), grid.field_axis("seed", ["3"])]
    with pytest.raises(SweepError) as caught:
        plan.plan(_sweep(tmp_path, axes))
    problems = caught.value.problems
    assert len(problems) == 2
    assert "model.fanin" in problems[1] and "did you mean model.fan_in" in problems[1]
    assert "--seeds" in problems[0]
    with pytest.raises(SweepError, match="fan_in is 9"):
        plan.plan(_sweep(tmp_path, [grid.field_axis("model.fan_in", ["9"])]))
    assert not os.listdir(tmp_path)


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    sweep = _sweep(tmp_path, [grid.field_axis("model.fan_in", ["2"])], seeds=[0])
    (run,) = plan.plan(sweep)
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
        json.dump({"model": {"fan_in": 3}, "seed": 0}, f)
    with pytest.raises(SweepError, match="another config"):
        plan.plan(sweep)


def test_bad_grid_field_is_one_error_line_and_exit_2(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    grids = ["--grid", "model.connectivity=full,learned", "--grid", "model.fanin=1,4"]
    assert sweep_cli.main(["--workdir", str(workdir), "--seeds", "2", *grids]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "error: --grid model.fanin=...: the config has no field model.fanin "
        "(did you mean model.fan_in?)"
    ]
    assert not workdir.exists()


def _fake_finished(runs, accuracies):
    for run, accuracy in zip(runs, accuracies, strict=True):
        os.makedirs(run.workdir, exist_ok=True)
        summary = {
            "test_accuracy": accuracy,
            "params_train": 860_000,
            "params_test": 650_000 + 1000 * run.seed,
            "live_blocks_per_module": [4, 8, 8],
        }
        with open(os.path.join(run.workdir, "summary.json"), "w") as f:
            json.dump(summary, f)


def test_aggregation_matches_numpy_and_the_paper_column(tmp_path):
    _, axis, notes = presets.combine(["table1"], set())
    sweep = _sweep(tmp_path, [axis[:2]], seeds=[0, 1, 2], config=CIFAR100)
    runs = plan.plan(sweep)
    accuracies = np.random.default_rng(0).uniform(0.6, 0.8, len(runs))
    _fake_finished(runs[:-1], accuracies[:-1])  # the last run has not finished
    results = aggregate.collect(sweep, runs)
    assert [r["status"] for r in results["runs"]] == ["finished"] * 5 + ["new"]
    full, learned = results["rows"]
    np.testing.assert_allclose(full["top1"]["mean"], 100 * accuracies[:3].mean())
    np.testing.assert_allclose(full["top1"]["std"], 100 * accuracies[:3].std(ddof=1))
    assert full["top1"]["best"] == 100 * accuracies[:3].max()
    assert (full["n"], learned["n"]) == (3, 2)
    assert learned["params_test"] == 650_500
    text = aggregate.table(results, notes)
    lines = text.splitlines()
    assert len([line for line in lines if line.startswith("| 29,8,8")]) == 2
    assert "| 29,8,8 | Fixed-Full | 8 |" in text and "| 29,8,8 | Learned | 1 |" in text
    expected = f"{100 * accuracies[:3].max():.2f} ({100 * accuracies[:3].mean():.2f} ± "
    assert expected in text
    assert "73.52 (73.37 ± 0.13) | 0.86M / 0.86M | Table 1" in text
    assert "| 3/3 |" in text and "| 2/3 |" in text


def _fake_command(args):
    return [sys.executable, FAKE_MAIN, *args]


def test_rerun_launches_only_what_has_not_finished(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path, [grid.field_axis("model.connectivity", ["full", "learned"])])
    runs = plan.plan(sweep)
    _fake_finished(runs[:3], [0.5, 0.6, 0.7])
    launched = []
    monkeypatch.setenv("FAKE_MAIN_MODE", "finish")

    def command(args):
        launched.append(args)
        return _fake_command(args)

    assert local.run_all(sweep, runs, command=command, out=lambda line: None) == 0
    assert [a[1] for a in launched] == [f"--workdir={runs[3].workdir}"]
    assert local.run_all(sweep, runs, command=command, out=lambda line: None) == 0
    assert len(launched) == 1  # everything finished: nothing is started


def test_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path, [], seeds=[0, 1])
    runs = plan.plan(sweep)
    monkeypatch.setenv("FAKE_MAIN_MODE", "fail")
    lines = []
    assert local.run_all(sweep, runs, command=_fake_command, out=lines.append) == 3
    assert sum("failed (exit 3): error: non-finite" in line for line in lines) == 2


_DRIVER = f"""
import sys
from mcjax.sweeps import grid, local, plan
sweep = plan.Sweep(sys.argv[1], {DIGITS!r}, {{}}, [], [0, 1])
runs = plan.plan(sweep)
sys.exit(local.run_all(sweep, runs, command=lambda a: [sys.executable, {FAKE_MAIN!r}, *a]))
"""


def _start_driver(workdir) -> subprocess.Popen:
    env = processes.env(FAKE_MAIN_MODE="wait")
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, timeout=90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_stops_the_run_cleanly_and_exits_75(tmp_path, signum):
    driver = _start_driver(tmp_path)
    first = tmp_path / "seed=0"
    try:
        assert _wait_for(first / "started")
        driver.send_signal(signum)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 75, err
    assert (first / "got_SIGTERM").exists()  # passed on once, as SIGTERM
    assert not (tmp_path / "seed=1").exists()  # the next run never started
    assert "run the same command again to resume" in out


def test_killing_the_sweep_stops_its_run_cleanly(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    driver = _start_driver(tmp_path)
    try:
        assert _wait_for(tmp_path / "seed=0" / "started")
        driver.kill()
        driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert _wait_for(tmp_path / "seed=0" / "got_SIGTERM", timeout=30)


def test_slurm_array_of_the_unfinished_runs(tmp_path):
    sweep = _sweep(tmp_path, [grid.field_axis("model.connectivity", ["full", "learned"])])
    runs = plan.plan(sweep)
    _fake_finished([runs[1]], [0.5])
    text = slurm.script(sweep, runs)
    assert "#SBATCH --array=0,2-3\n" in text and "#SBATCH --requeue" in text
    assert text.count(") args=(") == 4 and "launch/slurm.sbatch" in text
    path = tmp_path / "s.sbatch"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    assert slurm.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    _fake_finished([runs[0], runs[2], runs[3]], [0.5] * 3)
    with pytest.raises(ValueError, match="nothing to submit"):
        slurm.script(sweep, runs)


def test_report_and_dry_run_from_the_command_line(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--seeds", "2", "--grid", "model.fan_in=1,2"]
    assert sweep_cli.main([*args, "--dry_run"]) == 0
    count, *lines = capsys.readouterr().out.splitlines()
    assert count.startswith("planning 4 runs (2 grid points x 2 seeds)")
    assert len(lines) == 4 and all(line.startswith("new ") for line in lines)
    assert not os.listdir(tmp_path)  # a dry run writes nothing
    sweep = _sweep(tmp_path, [grid.field_axis("model.fan_in", ["1", "2"])])
    runs = plan.plan(sweep)
    plan.write(sweep, runs)
    _fake_finished(runs, [0.25, 0.5, 0.75, 1.0])
    assert sweep_cli.main(["--workdir", str(tmp_path), "--report"]) == 0
    table = capsys.readouterr().out
    assert "| 20,4,8 | Learned | 1 |" in table and "| 50.00 (37.50 ± 17.68) | 2/2 |" in table
    with open(tmp_path / "results.json") as f:
        assert len(json.load(f)["runs"]) == 4
    for name in ("table.md", "accuracy_vs_fan_in.png", "active_branches.png"):
        assert (tmp_path / name).exists(), name
