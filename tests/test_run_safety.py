"""A run never silently goes wrong: resume rules, the workdir lock, one-line errors.

One test (or one parametrised family) per case of the reliability list; each failed
before the change it names. The in-process resumes reuse the tiny digits run of
tests/conftest.py; the command-line cases start ``python -m mcjax.main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image
from test_faults import _ENV, REPO_ROOT, _message_lines, _steps, _template, tiny_flags
from test_train import digits_config

from configs import digits, imagenet
from mcjax import connectivity, masks
from mcjax.training import (
    exit_codes,
    from_config,
    loop,
    preemption,
    resume_rules,
    run_outputs,
    steps,
    validation,
)
from mcjax.training.checkpoint import Checkpointer, CheckpointMismatch
from mcjax.training.metric_writers import MetricWriter, read_records
from mcjax.training.workdir_lock import LOCK_NAME, WorkdirBusy, WorkdirLock

# One pytest-xdist worker for these: they share the `uninterrupted` run (conftest.py).
pytestmark = pytest.mark.xdist_group("uninterrupted")


def _hashes(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (the byte-identity of a workdir)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    """The workdir a run stopped after ``last_step`` leaves: its checkpoints up to it."""
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    for name in ("summary.json", "connectivity_frozen.json"):
        if (workdir / name).exists() and (name == "summary.json" or last_step < 9):
            os.remove(workdir / name)


def _main(*args: str, cwd=REPO_ROOT, env=None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "mcjax.main", *args],
        cwd=cwd,
        env=env or _ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(result) -> str:
    """The run exited 2 with exactly one ``error:`` line and no traceback."""
    assert result.returncode == exit_codes.EXIT_BAD_INPUT == 2, result.stderr
    assert "Traceback" not in result.stderr and "FATAL" not in result.stderr, result.stderr
    lines = _message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------- 1: changed schedule


@pytest.mark.parametrize(
    "field, value",
    [("phase_epochs", (0.02, 0.03, 0.02, 0.02)), ("batch_size", 16), ("mask_learning_rate", 0.1)],
)
def test_case1_resume_with_another_schedule_is_refused_naming_the_field(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps(digits_config().to_dict()))
    config = digits_config()
    config[field] = value
    with pytest.raises(validation.ConfigError) as info:
        resume_rules.check_workdir_matches(str(tmp_path), config)
    assert len(info.value.problems) == 1
    assert f"config.{field} is " in str(info.value) and "--force_resume" in str(info.value)


def test_case1_forced_resume_past_phase_one_freezes_exactly_once(uninterrupted, tmp_path):
    """Stopped after step 6 of 22; resumed with phase 1 ending at step 4 (--force_resume):
    the first step freezes the masks (as a fresh run of the new schedule would at its
    phase boundary), training never sees all-zero connectivity."""
    _, whole, _ = uninterrupted
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 6)
    checkpoints = Checkpointer(str(workdir))
    at_stop, _ = checkpoints.restore(6, _template(digits_config()))
    checkpoints.close()
    assert not bool(at_stop.masks_frozen)
    config = digits_config()
    config.phase_epochs = (0.02, 0.03, 0.02, 0.02)  # 4, 5, 4, 4 steps: step 6 is phase 2
    summary = loop.train_and_evaluate(config, str(workdir), force_resume=True)
    assert summary["steps"] == 17
    expected = np.asarray(masks.top_k(at_stop.params["masks"], 2))
    with open(workdir / "connectivity_frozen.json") as f:
        frozen = json.load(f)
    assert frozen["step"] == 6  # the first step of the resumed run
    for index, module in enumerate(frozen["modules"][1:]):
        np.testing.assert_array_equal(module["binary"], expected[index])
    checkpoints = Checkpointer(str(workdir))
    last, _ = checkpoints.restore(17, _template(config))
    checkpoints.close()
    assert bool(last.masks_frozen)
    np.testing.assert_array_equal(last.fixed_masks, expected)  # sums to 2 per row, not 0
    # The masks stopped learning at the freeze.
    np.testing.assert_array_equal(last.params["masks"], at_stop.params["masks"])


def test_case1_one_policy_decides_the_masks_of_every_mode():
    table = {
        ("learned", False, True): connectivity.SAMPLED,
        ("learned", False, False): connectivity.TOP_K,
        ("learned", True, True): connectivity.FROZEN_TOP_K,
        ("learned", True, False): connectivity.FROZEN_TOP_K,
        ("random", False, True): connectivity.FIXED_RANDOM,
        ("real", True, False): connectivity.REAL,
        ("full", True, True): connectivity.NONE,
    }
    for (mode, frozen, train), expected in table.items():
        assert connectivity.source(mode, frozen=frozen, train=train) == expected
    net = from_config.network(digits_config())
    state = steps.create_state(net, from_config.optimizer(digits_config(), _schedule()), _KEY)
    assert not bool(state.masks_frozen) and float(np.asarray(state.fixed_masks).sum()) > 0
    assert connectivity.must_freeze(net, phase=2, frozen=False)
    assert not connectivity.must_freeze(net, phase=1, frozen=False)
    assert not connectivity.must_freeze(net, phase=3, frozen=True)


_KEY = jax.random.key(0)


def _schedule():
    return from_config.schedule(digits_config(), 1437)


# ------------------------------------------------------ 2: restore of another network


@pytest.mark.parametrize("without_config_json", [False, True])
def test_case2_forced_resume_into_another_shape_leaves_the_workdir_byte_identical(
    uninterrupted, tmp_path, without_config_json
):
    _, whole, _ = uninterrupted
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 12)
    if without_config_json:
        os.remove(workdir / "config.json")
    before = _hashes(workdir)
    config = digits_config(arch="11,4,4")  # bottleneck width 4 instead of 2
    with pytest.raises(CheckpointMismatch, match=r"step 12 .* does not fit"):
        loop.train_and_evaluate(config, str(workdir), force_resume=not without_config_json)
    assert _hashes(workdir) == before
    assert not (workdir / "corrupt_checkpoints").exists()


# ------------------------------------------------------------------- 3: workdir lock


def test_case3_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    with WorkdirLock(str(tmp_path)):
        start = time.monotonic()
        with pytest.raises(WorkdirBusy) as info, WorkdirLock(str(tmp_path)):
            pass
        assert time.monotonic() - start < 5
        assert f"pid {os.getpid()}" in str(info.value) and socket.gethostname() in str(info.value)
    with WorkdirLock(str(tmp_path)):  # released
        pass
    assert (tmp_path / LOCK_NAME).read_bytes() == b""  # a finished run leaves it empty
    # A holder killed with SIGKILL leaves no stale lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mcjax.training.workdir_lock import WorkdirLock; "
            f"lock = WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
            "time.sleep(600)",
        ],
        cwd=REPO_ROOT,
        env=_ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid} "):
            WorkdirLock(str(tmp_path)).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(str(tmp_path)):
        pass


# Two command-line runs; test_case3_the_lock_names_its_holder_and_dies_with_it checks the
# lock itself in this process.
@pytest.mark.slow
def test_case3_a_second_run_on_a_busy_workdir_exits_2_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "mcjax.main", "--workdir", str(workdir), *tiny_flags()],
        cwd=REPO_ROOT,
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = workdir / LOCK_NAME
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_bytes()) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.05)
        second = _main("--workdir", str(workdir), *tiny_flags())
        line = _one_error_line(second)
        assert f"pid {first.pid} on host {socket.gethostname()}" in line
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode in (0, exit_codes.EXIT_PREEMPTED), stderr
    assert "Traceback" not in stderr


# --------------------------------------------------- 4 and 5: bad input is one line


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--config.eval_batch_size=100000",), ("config.eval_batch_size", "360")),  # case 4
        (("--config.batch_size=4096",), ("config.batch_size", "1437")),
        (("--config.model.fan_inn=3",), ("--config.model.fan_inn", 'did you mean "fan_in"')),
        (("--config.model.fan_in=2.5",), ("--config.model.fan_in=2.5",)),
        (("--config.model.fan_in=a",), ("--config.model.fan_in=a",)),
        (("--config.decay_norm_and_bias=maybe",), ("--config.decay_norm_and_bias=maybe",)),
        (("--config.seed=-1",), ("config.seed", "[0, 4294967295]")),
        ((f"--config.seed={2**64}",), ("config.seed", "[0, 4294967295]")),
        (
            ("--config.phase_epochs=(1,1,1,1)", "--config.phase_epochs=(1,1,1,2)"),
            ("--config.phase_epochs", "twice"),
        ),
    ],
    ids=lambda value: "-".join(value)[:40] if isinstance(value, tuple) else None,
)
def test_case4_5_bad_flag_is_one_line_naming_it(tmp_path, flags, named):
    # The flags under test replace the tiny ones they name (the repeated one on purpose).
    base = [f for f in tiny_flags() if f.split("=")[0] not in {g.split("=")[0] for g in flags}]
    line = _one_error_line(_main("--workdir", str(tmp_path / "run"), *base, *flags))
    for text in named:
        assert text in line, line
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_case5_7_workdir_that_is_a_file_or_empty_is_one_line(tmp_path, kind):
    workdir = tmp_path / "a_file"
    workdir.write_text("not a directory")
    line = _one_error_line(_main("--workdir", "" if kind == "empty" else str(workdir)))
    assert "--workdir" in line and ("is empty" if kind == "empty" else str(workdir)) in line


# Runs mcjax.main in a subprocess with one OS error injected (a read-only or full disk
# cannot be made for real in a test, and root writes to read-only directories anyway).
_INJECT = """
import errno, os, runpy, sys
from mcjax.training import checkpoint, workdir_lock
kind, workdir = sys.argv[1], sys.argv[2]
if kind == "read_only":
    real_open = os.open
    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(workdir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)
    workdir_lock.os.open = refusing_open
else:  # the disk fills up when the checkpoint of step 6 is written
    real_save = checkpoint.Checkpointer.save
    def filling_save(self, step, state, meta):
        if step >= 6:
            path = os.path.join(self.directory, str(step))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(self, step, state, meta)
    checkpoint.Checkpointer.save = filling_save
sys.argv = ["mcjax.main", *sys.argv[3:]]
runpy.run_module("mcjax.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("kind", ["read_only", pytest.param("full", marks=pytest.mark.slow)])
def test_case5_read_only_or_full_disk_is_one_line_and_keeps_the_checkpoint(tmp_path, kind):
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _INJECT,
            kind,
            str(workdir),
            "--workdir",
            str(workdir),
            *tiny_flags(),
        ],
        cwd=REPO_ROOT,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _one_error_line(result)
    if kind == "read_only":
        assert str(workdir) in line and "Read-only file system" in line
        return
    assert "no space left" in line and str(workdir / "checkpoints" / "6") in line
    assert _steps(workdir) == [3]
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(3)  # the last good checkpoint, finished and intact
    checkpoints.close()


# ------------------------------------------------------------------ 6: another seed


def test_case6_another_seed_on_resume_is_refused(uninterrupted, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(digits_config().to_dict()))
    config = digits_config()
    config.seed = 1
    with pytest.raises(validation.ConfigError, match=r"config\.seed is 1, .* used 0"):
        resume_rules.check_workdir_matches(str(tmp_path), config)
    # Without config.json, the checkpoint's own record of the seed refuses it.
    _, whole, _ = uninterrupted
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 12)
    os.remove(workdir / "config.json")
    before = _hashes(workdir)
    with pytest.raises(validation.ConfigError, match=r"config\.seed is 1, .* step 12"):
        loop.train_and_evaluate(config, str(workdir))
    assert _hashes(workdir) == before


# ---------------------------------------------------------------------- 7: smaller


def test_case7_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from mcjax.data import image_folder

    levels = np.array([[0, 257 * 64], [257 * 128, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # really a 16-bit PNG
    pixels = image_folder._read_resized(str(path), 2)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 64], [128, 255]])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_case7_torn_non_utf8_last_line_of_metrics_is_tolerated(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 2, "train/loss": 1.5}\n{"step": 4, "train/lo\xff\xfe\x80')
    assert read_records(str(path)) == [{"step": 2, "train/loss": 1.5}]
    writer = MetricWriter(str(tmp_path), resume_step=3)  # what a resumed run does
    writer.close()
    assert read_records(str(path)) == [{"step": 2, "train/loss": 1.5}]


def test_case7_sigterm_during_the_final_outputs_exits_preempted(
    uninterrupted, tmp_path, monkeypatch
):
    config, whole, digest = uninterrupted
    workdir = tmp_path / "run"
    _copy_until(whole, workdir, 22)  # every step done: only the final outputs are left
    real_finish = run_outputs.finish

    def finish_under_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, during the export
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(run_outputs, "finish", finish_under_sigterm)
    with pytest.raises(preemption.Preempted, match="SIGTERM after step 22"):
        loop.train_and_evaluate(config, str(workdir))
    monkeypatch.setattr(run_outputs, "finish", real_finish)
    assert loop.train_and_evaluate(config, str(workdir))["state_digest"] == digest


def test_case7_cost_table_runs_outside_the_repository_and_shows_the_stem_stride(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mcjax.cost_table", "--json"],
        cwd=tmp_path,
        env={**_ENV, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["modules"][0]["stride"] == 1  # the CIFAR stem

    from mcjax import cost_table

    config = imagenet.get_config()
    config.model.stem = "imagenet"
    stem = cost_table.summarize(config)["modules"][0]
    size = int(config.data.image_size)
    assert stem["name"] == "stem" and stem["stride"] == 4  # stride-2 conv, stride-2 pool
    assert stem["resolution"] == size // stem["stride"]


# -------------------------------------------------------------- the resume rules


def test_bookkeeping_may_change_on_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(digits.get_config().to_dict()))
    config = digits.get_config()
    for field in resume_rules.RESUMABLE_FIELDS:
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        value = node[leaf]
        options = {
            "model.branch_impl": "grouped",
            "model.dtype": "bfloat16",
            "data.data_dir": "/elsewhere",
            "model.zero_init_residual": not value,
        }
        if field in options:
            node[leaf] = options[field]
        elif isinstance(value, float):
            node[leaf] = value * 2
        else:
            node[leaf] = value + 3
    resume_rules.check_workdir_matches(str(tmp_path), config)


def test_every_other_field_is_compared_on_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(digits.get_config().to_dict()))
    flat = resume_rules._flat(digits.get_config().to_dict())
    compared = [f for f in flat if f not in resume_rules.RESUMABLE_FIELDS]
    assert {"seed", "batch_size", "phase_epochs", "model.arch", "data.name"} <= set(compared)
    for field in compared:
        tree = digits.get_config().to_dict()
        *parents, leaf = field.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = "changed"
        config = ml_collections.ConfigDict(tree, type_safe=False)
        with pytest.raises(validation.ConfigError, match=re.escape(f"config.{field} is 'changed'")):
            resume_rules.check_workdir_matches(str(tmp_path), config)
