"""``python -m mcjax.main``: every bad input is one ``error:`` line and exit status 2.

The command runs in this process (:func:`support.entry_points.run_main`): these cases fail
before anything compiles, and what is tested is how an error becomes a sentence and an
exit status, which the process adds nothing to.
"""

from __future__ import annotations

import errno
import os

import pytest
from support import fake_data, tiny, workdirs
from support.entry_points import run_main

from mcjax.training import workdir as run_workdir
from mcjax.training.workdir import Checkpointer


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--config.eval_batch_size=100000",), ("config.eval_batch_size", "360")),
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
def test_bad_flag_is_one_error_line_naming_it(tmp_path, flags, named):
    # The flags under test replace the tiny ones they name (the repeated one on purpose).
    names = {g.split("=")[0] for g in flags}
    base = [f for f in tiny.tiny_flags() if f.split("=")[0] not in names]
    line = run_main("--workdir", str(tmp_path / "run"), *base, *flags).error_line()
    for text in named:
        assert text in line, line
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_workdir_that_is_a_file_or_empty_is_one_error_line(tmp_path, kind):
    workdir = tmp_path / "a_file"
    workdir.write_text("not a directory")
    line = run_main("--workdir", "" if kind == "empty" else str(workdir)).error_line()
    assert "--workdir" in line and ("is empty" if kind == "empty" else str(workdir)) in line


def test_read_only_workdir_is_one_error_line(tmp_path, monkeypatch):
    # A read-only disk cannot be made for real in a test (and root writes anyway): the
    # OS error is injected where the run first writes, the lock file.
    workdir = tmp_path / "run"
    workdir.mkdir()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(workdir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_workdir.os, "open", refusing_open)
    line = run_main("--workdir", str(workdir), *tiny.TINY_FLAGS).error_line()
    assert str(workdir) in line and "Read-only file system" in line


def test_full_disk_is_one_error_line_and_keeps_the_last_checkpoint(tiny_run, tmp_path, monkeypatch):
    """The disk fills up when the checkpoint of step 6 is written. (``tiny_run``: its
    programs are compiled, and loaded here from the compilation cache.)"""
    workdir = tmp_path / "run"
    workdir.mkdir()
    real_save = run_workdir.Checkpointer.save

    def filling_save(self, step, state, meta):
        if step >= 6:
            path = os.path.join(self.directory, str(step))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(self, step, state, meta)

    monkeypatch.setattr(run_workdir.Checkpointer, "save", filling_save)
    line = run_main("--workdir", str(workdir), *tiny.TINY_FLAGS).error_line()
    assert "no space left" in line and str(workdir / "checkpoints" / "6") in line
    assert workdirs.checkpoint_steps(workdir) == [3]
    checkpoints = Checkpointer(str(workdir))
    assert checkpoints.verify(3)  # the last good checkpoint, finished and intact
    checkpoints.close()


def test_unprepared_cifar_is_one_error_line(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    ran = run_main(
        "--config=configs/cifar10.py",
        f"--config.data.data_dir={empty}",
        "--workdir",
        str(tmp_path / "run"),
    )
    assert ran.status == run_workdir.EXIT_BAD_INPUT
    assert "cifar10" in ran.error_line()


def _mini_imagenet(folder, workdir, num_classes):
    return [
        "--config=configs/mini_imagenet.py",
        f"--config.data.data_dir={folder}",
        f"--config.data.num_classes={num_classes}",
        "--config.data.folder_image_size=20",
        "--config.data.image_size=16",
        "--config.data.train_per_class=3",
        "--config.data.test_per_class=1",
        "--config.model.arch=11,2,4",
        "--config.model.fan_in=2",
        "--config.batch_size=4",
        "--workdir",
        str(workdir),
    ]


def test_image_folder_with_wrong_class_count_is_one_error_line(tmp_path):
    fake_data.make_image_folder(tmp_path / "images", num_classes=3, per_class=4)
    line = run_main(*_mini_imagenet(tmp_path / "images", tmp_path / "run", 5)).error_line()
    assert "3 class subfolders" in line


def test_unreadable_image_is_one_error_line(tmp_path):
    fake_data.make_image_folder(tmp_path / "images", num_classes=3, per_class=4)
    broken = tmp_path / "images" / "n001" / "img_02.png"
    broken.write_bytes(b"this is not a png")
    line = run_main(*_mini_imagenet(tmp_path / "images", tmp_path / "run", 3)).error_line()
    assert str(broken) in line


def test_bad_fan_in_is_refused_before_anything_runs(tmp_path):
    ran = run_main(
        "--config=configs/digits.py", "--config.model.fan_in=9", "--workdir", str(tmp_path)
    )
    line = ran.error_line()
    assert "config.model.fan_in" in line and "9" in line
    assert not (tmp_path / "config.json").exists()  # refused before anything ran
