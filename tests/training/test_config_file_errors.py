"""What goes wrong before training starts is one ``error:`` line and exit status 2.

A missing ``--config`` file was a traceback (exit 1); a config file calling
``SystemExit(0)`` ended the program with status 0 having done nothing; a ``get_config``
returning a dict gave "the config has no field 'model'"; ``phase_epochs`` whose steps pass
int32 were tracebacks; a 100,000-character override was echoed whole. ``mcjax.main`` runs
in this process, its flags parsed as on the command line; nothing here compiles.
"""

from __future__ import annotations

import re

import pytest
from support import entry_points

from mcjax.training import workdir as run_workdir

_LOG_LINE = re.compile(r"^[IWEF]\d{4} |^step ")


@pytest.fixture()
def run_main():
    """``run_main(*args)``: ``python -m mcjax.main *args`` in this process
    (:func:`support.entry_points.run_main`); ``(status, lines)``, the lines being stderr
    without log and progress lines."""

    def call(*args: str):
        ran = entry_points.run_main(*args)
        return ran.status, ran.lines

    return call


def _one_line(status, lines) -> str:
    assert status == run_workdir.EXIT_BAD_INPUT == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_missing_config_file_is_one_line(tmp_path, run_main):
    missing = tmp_path / "nothere.py"
    line = _one_line(*run_main("--config", str(missing), "--workdir", str(tmp_path / "run")))
    assert f"--config {missing}: no such file" in line
    assert not (tmp_path / "run").exists()


def test_overrides_of_a_missing_config_file_name_the_file(tmp_path, run_main):
    missing = tmp_path / "nothere.py"
    line = _one_line(*run_main(f"--config={missing}", "--config.seed=3"))
    assert "no such file" in line


@pytest.mark.parametrize(
    "source, words",
    [
        ("raise SystemExit(0)\n", ["raised SystemExit(0) at line 1"]),
        ("import sys\nsys.exit(3)\n", ["raised SystemExit(3) at line 2"]),
        ("def get_config():\n    return undefined\n", ["NameError", "at line 2"]),
        ("def get_config():\n    return {'model': {}}\n", ["get_config() returned 'dict'"]),
        ("x = 1\n", ["defines no get_config()"]),
    ],
    ids=["exit-0", "exit-3", "name-error", "dict", "no-get_config"],
)
def test_a_config_file_that_exits_raises_or_returns_no_configdict_is_one_line(
    tmp_path, run_main, source, words
):
    path = tmp_path / "bad_config.py"
    path.write_text(source)
    line = _one_line(*run_main("--config", str(path), "--workdir", str(tmp_path / "run")))
    assert line.startswith(f"error: --config {path}: ")
    for word in words:
        assert word in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("epochs", ["1e308", "2e7"])
def test_phase_epochs_past_the_int32_step_counter_are_one_line(tmp_path, run_main, epochs):
    line = _one_line(
        *run_main(
            f"--config.phase_epochs=({epochs},1,1,1)",
            "--config.batch_size=8",
            "--workdir",
            str(tmp_path / "run"),
        )
    )
    assert "config.phase_epochs" in line and "2147483647" in line and "steps" in line


@pytest.mark.parametrize(
    "override",
    [
        "--config.model.arch=" + "a" * 100_000,
        "--config.seed=" + "7" * 100_000,
        "--config.model.fan_in=" + "x" * 100_000,
    ],
    ids=["string", "int", "not-an-int"],
)
def test_a_huge_override_is_not_echoed_whole(tmp_path, run_main, override):
    line = _one_line(*run_main(override, "--workdir", str(tmp_path / "run")))
    assert len(line) < 1000, len(line)
    assert "characters)" in line
