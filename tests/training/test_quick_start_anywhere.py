"""``python -m mcjax.main`` without ``--config`` runs the digits quick start shipped inside
the package (mcjax/configs/digits.py), from any directory, once the package is installed.

The package is installed here as pip lays it out: the ``mcjax`` tree alone in a directory
on ``PYTHONPATH`` (setup.py installs nothing else), without the repository's ``configs/``
beside it, and the command runs from a third directory.
"""

from __future__ import annotations

import json
import shutil

import pytest
from support import REPO_ROOT, processes, tiny


def _installed(tmp_path):
    """``(site, elsewhere)``: the package alone in ``site``, and an empty directory."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(
        REPO_ROOT / "mcjax", site / "mcjax", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere.mkdir()
    return site, elsewhere


def test_main_without_config_reads_the_packaged_digits_config_from_any_directory(tmp_path):
    # The default workdir is runs/<config.data.name>: made a file here, the run stops at
    # once, naming it, which it can only do once it has loaded the digits config. Before,
    # the default config was read from ../configs/ beside the package, which an installed
    # package does not have ("--config ...: no such file").
    site, elsewhere = _installed(tmp_path)
    (elsewhere / "runs").mkdir()
    (elsewhere / "runs" / "digits").write_text("not a directory")
    ran = processes.run_main([], cwd=elsewhere, env=processes.env(PYTHONPATH=str(site)))
    assert ran.returncode == 2, ran.stderr
    assert processes.message_lines(ran.stderr) == [
        "error: --workdir runs/digits is a file; it must be a directory (new, or of a run)"
    ]


@pytest.mark.slow
def test_quick_start_of_the_installed_package_ends_in_the_tiny_runs_state(tmp_path, tiny_run):
    site, elsewhere = _installed(tmp_path)
    workdir = tmp_path / "run"
    ran = processes.run_main(
        ["--workdir", str(workdir), *tiny.TINY_FLAGS],
        cwd=elsewhere,
        env=processes.env(PYTHONPATH=str(site)),
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["state_digest"] == tiny_run.digest
