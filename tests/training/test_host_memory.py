"""The program's host allocator setting (``mcjax.training.host_memory``, ``--host_malloc``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from support import entry_points, tiny

from mcjax.training import host_memory

# Allocates, touches and frees a 128 MiB buffer twice through the C library; prints the
# minor page faults of each round. With freed memory kept mapped, the second round
# reuses the first one's pages.
_FAULTS = r"""
import ctypes, json, resource, sys
sys.path.insert(0, {path!r})
import host_memory
tuned = {tuned!r} and host_memory.keep_freed_memory_mapped()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 128 << 20
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(buffer)
print(json.dumps({{"tuned": tuned, "faults": faults}}))
"""


def _fault_rounds(tuned: bool) -> dict:
    path = os.path.dirname(host_memory.__file__)
    script = _FAULTS.format(path=path, tuned=tuned)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout)


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")
def test_kept_mapped_memory_is_not_faulted_in_again():
    default = _fault_rounds(tuned=False)
    pages = (128 << 20) // 4096
    if default["faults"][1] < pages // 10:
        pytest.skip(f"this C library reuses a freed 128 MiB buffer by itself: {default}")
    tuned = _fault_rounds(tuned=True)
    assert tuned["tuned"] is True
    # The second round finds the pages the first one mapped.
    assert tuned["faults"][1] < pages // 100, (default, tuned)


@pytest.mark.parametrize(
    "environ, plugins, expected",
    [
        ({"JAX_PLATFORMS": "cpu"}, ["cuda"], True),
        ({"JAX_PLATFORMS": " cpu "}, [], True),
        ({"JAX_PLATFORMS": "cuda"}, [], False),
        ({"JAX_PLATFORMS": "cuda,cpu"}, [], False),
        ({}, [], True),
        ({}, ["cuda"], False),
        ({}, ["libtpu"], False),
    ],
)
def test_auto_keeps_memory_mapped_only_for_a_cpu_process(monkeypatch, environ, plugins, expected):
    monkeypatch.setattr(host_memory, "_accelerator_plugins", lambda: plugins)
    assert host_memory.resolve("auto", environ=environ) is expected
    assert host_memory.resolve("tuned", environ=environ) is True
    assert host_memory.resolve("default", environ=environ) is False


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="host_malloc must be one of"):
        host_memory.resolve("sometimes")


@pytest.mark.parametrize("setting, calls", [("tuned", 1), ("default", 0)])
def test_the_program_applies_its_setting_first(tmp_path, setting, calls):
    # A workdir that is a file fails right after the setting is applied.
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    before = len(entry_points.HOST_MALLOC_CALLS)
    outcome = entry_points.run_main("--workdir", str(a_file), f"--host_malloc={setting}")
    assert "--workdir" in outcome.error_line()
    assert len(entry_points.HOST_MALLOC_CALLS) - before == calls


def test_an_unknown_host_malloc_flag_is_one_error_line(tmp_path):
    outcome = entry_points.run_main(
        "--workdir", str(tmp_path / "run"), *tiny.TINY_FLAGS, "--host_malloc=sometimes"
    )
    line = outcome.error_line()
    assert "host_malloc" in line and "sometimes" in line
