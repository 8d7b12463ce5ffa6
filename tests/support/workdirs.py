"""Reading, copying and damaging the workdir of a run."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import jax


def checkpoint_steps(workdir) -> list[int]:
    """The steps of the finished checkpoints in ``workdir/checkpoints``."""
    directory = pathlib.Path(workdir) / "checkpoints"
    names = os.listdir(directory) if directory.exists() else []
    return sorted(int(name) for name in names if name.isdigit())


def template(config):
    """A state of ``config``'s network and optimizer to restore a checkpoint into."""
    from mcjax.training import steps
    from mcjax.training.config import from_config_dict

    typed = from_config_dict(config)
    net = typed.model.network(typed.data)
    tx = typed.schedule.optimizer(typed.schedule.phases(1437))
    return steps.create_state(net, tx, jax.random.key(0))


def hashes(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (the byte-identity of a workdir)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def copy_until(whole: pathlib.Path, workdir: pathlib.Path, last_step: int) -> None:
    """The workdir a run stopped after ``last_step`` leaves: its checkpoints up to it."""
    shutil.copytree(whole, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > last_step:
            shutil.rmtree(workdir / "checkpoints" / name)
            os.remove(workdir / "checkpoint_sums" / f"{name}.sha256.json")
    for name in ("summary.json", "connectivity_frozen.json"):
        if (workdir / name).exists() and (name == "summary.json" or last_step < 9):
            os.remove(workdir / name)
