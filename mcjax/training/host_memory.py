"""The program's host allocator setting: freed memory kept mapped for reuse (glibc).

XLA:CPU allocates a train step's large temporaries afresh every step. glibc's ``malloc``
serves a request over its ``mmap`` threshold (32 MiB at most) with a fresh mapping and
unmaps it when it is freed, and a worker thread's arena does the same with its heaps, so
every step page-faults its large buffers in again (81k minor faults per ``full`` step and
428k per ``learned`` step at ``29,8,8``, batch 32, about 2.5 us each on the 2-core
development VM; ``benchmarks/RESULTS.md``). One arena, no ``mmap`` and no trimming keep
them mapped: a ``full`` step ran 1.3x faster on one pinned core. The price is that the
process's memory never shrinks: it keeps its high-water mark, which a training process
reaches in its first steps anyway.

The setting must be made before JAX creates its thread pools (before the backend is
initialised): a thread keeps the arena it first allocated from, and applied later it
measured no gain at all. ``python -m mcjax.main`` makes it first thing on CPU
(``--host_malloc``); a library user does the same with :func:`keep_freed_memory_mapped`
before the first JAX computation, or with :data:`GLIBC_TUNABLES` in the environment of the
process.

This module imports nothing of JAX or mcjax, so that ``benchmarks/`` can apply the same
setting to the workers of any checkout.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil

__all__ = [
    "GLIBC_TUNABLES",
    "SETTINGS",
    "apply",
    "keep_freed_memory_mapped",
    "resolve",
]

#: ``--host_malloc`` values: ``auto`` keeps freed memory mapped when the process will run
#: on the CPU (``JAX_PLATFORMS=cpu``, or no accelerator plugin installed), ``tuned`` always,
#: ``default`` never (glibc's defaults).
SETTINGS = ("auto", "tuned", "default")

#: The same setting for a process started from outside (``GLIBC_TUNABLES=...``).
GLIBC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"
)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory_mapped() -> bool:
    """One arena, no ``mmap``, no trimming: freed memory stays mapped for the next step.

    Call it before the first JAX computation. Returns False where it cannot apply (a C
    library other than glibc), True once applied; it never raises.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def _accelerator_plugins() -> list[str]:
    """The JAX backend plugins installed besides the CPU (CUDA, ROCm, TPU, ...)."""
    names = [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins  # the namespace package JAX scans for PJRT plugins
    except ImportError:
        pass
    else:
        names += [module.name for module in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return sorted(set(names))


def resolve(setting: str, *, environ: dict[str, str] | None = None) -> bool:
    """Whether ``setting`` (one of :data:`SETTINGS`) keeps freed memory mapped here.

    ``auto`` decides before JAX starts, from what will run: True when ``JAX_PLATFORMS``
    names only ``cpu``, or when no accelerator plugin is installed; False otherwise (an
    accelerator job's host work is the input pipeline, whose threads one arena would
    serialise).
    """
    if setting not in SETTINGS:
        raise ValueError(f"host_malloc must be one of {SETTINGS}, got {setting!r}")
    if setting != "auto":
        return setting == "tuned"
    env = os.environ if environ is None else environ
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms == ["cpu"]
    return not _accelerator_plugins()


def apply(setting: str) -> bool:
    """Applies ``setting`` in this process; True when freed memory is now kept mapped."""
    return resolve(setting) and keep_freed_memory_mapped()
