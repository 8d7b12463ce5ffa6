"""mcjax.safe_files: the one way mcjax writes files, against planted links and special files."""

from __future__ import annotations

import errno
import os

import pytest

from mcjax import safe_files


def test_write_replaces_a_planted_link_and_leaves_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, tmp_path / "out.json")
    safe_files.write_json(tmp_path / "out.json", {"a": 1})
    assert target.read_text() == "keep"
    assert not (tmp_path / "out.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "target.txt"]


def test_append_never_follows_a_link(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, tmp_path / "log.jsonl")
    with pytest.raises(OSError) as info:
        safe_files.append_bytes(tmp_path / "log.jsonl", b"line\n")
    assert info.value.errno == errno.ELOOP and target.read_text() == "keep"


def test_append_refuses_a_fifo_without_blocking_and_a_directory(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError) as info:  # no reader: it would block for ever without O_NONBLOCK
        safe_files.append_bytes(tmp_path / "fifo", b"line\n")
    assert info.value.errno in (errno.ENXIO, errno.EINVAL)
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:  # with a reader the open succeeds: refused as not a regular file
        with pytest.raises(OSError, match="not a regular file"):
            safe_files.append_bytes(tmp_path / "fifo", b"line\n")
    finally:
        os.close(reader)
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        safe_files.append_bytes(tmp_path / "dir", b"line\n")


def test_append_adds_to_a_regular_file(tmp_path):
    safe_files.append_bytes(tmp_path / "log", b"one\n")
    safe_files.append_bytes(tmp_path / "log", b"two\n")
    assert (tmp_path / "log").read_bytes() == b"one\ntwo\n"


def test_a_failed_write_names_its_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        safe_files.write_text(tmp_path / "out.txt", "x")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []
