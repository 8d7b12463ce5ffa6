"""Settings of the test session, and the fixtures tests share.

Layout. The tests mirror the package: ``core/`` (the top-level modules of mcjax: masks,
blocks, models, optim, prune, costs, export, architectures, connectivity), ``data/``,
``training/`` (the program: the command line, the loop, checkpoints, interruptions,
resume rules, validation, parallel and multi-process runs), ``flax/``, ``figures/``,
``sweeps/``, ``benchmarks/`` and ``project/`` (README blocks, layout, launch scripts).
Code the tests share is in ``support/`` (imported as ``support``; ``pythonpath`` in
pyproject.toml); a test file never imports another test file. pytest imports test files
with ``--import-mode=importlib``: a test file is not a module on ``sys.path``, so two
folders may hold files of the same name without clashing (name each file by what it
tests anyway, so that a report's path says it).

Two tiers. ``python -m pytest`` runs every behaviour in minutes; ``python -m pytest -m
slow`` runs the whole-run and multi-process variants (``@pytest.mark.slow``) of
behaviours the default tier checks more cheaply. Either tier passes alone and in any
order; ``.ci/run`` runs both.

Compile once. The time of the tests is mostly XLA compiles, so:

* ``jax_disable_most_optimizations``: measured on the 2-core CPU machine, the whole suite
  took 107 s with it and 221 s without, with the same results (when it had 201 tests).
  The compiled code runs slower (a ``20,4,8`` train step on 32 images took 5.1 s instead
  of 2.8 s), which only matters to tests that train for many steps.
* ``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false``: XLA:CPU's older fusion code
  generator, which compiles several times faster: the train step of an ``11,2,4``
  network (8 images of 32x32) compiled in 1.7 s instead of 7.7 s (bfloat16: 2.5 s
  instead of 12.6 s) and ran in 0.63 s instead of 0.47 s (jaxlib 0.10.2, with the
  setting above; CPU seconds).
* a persistent compilation cache (``jax_compilation_cache_dir``) in pytest's cache
  directory (``.pytest_cache/d/jax_compilation_cache``), shared by the xdist workers and
  the processes tests start (through ``os.environ``): a program compiled once in the
  session (the tiny run's steps, which every resume of it compiles again) is loaded
  afterwards, and the next session starts warm. ``--cache-clear`` empties it.
* one tiny training run per session (the ``tiny_run`` fixture), which the tests that
  need a finished or interrupted run copy instead of training their own.

Isolation: ``HOME`` and the XDG directories point into a temporary directory (matplotlib
and tfds write there, not into the user's home), and a connection to anything but this
machine raises :class:`NetworkUsed`, in this process (the processes tests start inherit
the environment but not the check).
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import os
import shutil
import socket
import tempfile

import pytest

# --- Isolation (before anything imports matplotlib or tensorflow_datasets) --------------

_SESSION_HOME = tempfile.mkdtemp(prefix="mcjax-tests-home-")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["HOME"] = _SESSION_HOME
for _name, _sub in {
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "MPLCONFIGDIR": ".config/matplotlib",
}.items():
    os.environ[_name] = os.path.join(_SESSION_HOME, _sub)
    os.makedirs(os.environ[_name], exist_ok=True)


class NetworkUsed(RuntimeError):
    """A test tried to reach another machine (or to resolve a name other than this one's)."""


_LOCAL_NAMES = {"localhost", "", socket.gethostname()}


def _is_local(host) -> bool:
    if host is None or host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded(method):
    def guarded(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise NetworkUsed(f"a test connected to {address!r}; the tests use no network")
        return method(sock, address, *args)

    return guarded


_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        raise NetworkUsed(f"a test looked up {host!r}; the tests use no network")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded(socket.socket.connect)
socket.socket.connect_ex = _guarded(socket.socket.connect_ex)
socket.getaddrinfo = _getaddrinfo

# --- JAX: faster compiles, compiled once ----------------------------------------------

# Read when JAX starts its CPU backend (in this process: at the first computation, after
# this module is imported); the processes tests start inherit it (support.processes.env).
_FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"
if _FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE_FLAG}".strip()

_JAX_SETTINGS = {
    "jax_disable_most_optimizations": True,
    # Not the many tiny programs of eager ops: writing each cost more than it saved
    # (tests/core/test_export.py: 29 s of CPU with every program cached, 25 s with those
    # of 1 s and more, 23 s without the cache; a training run's steps take seconds).
    "jax_persistent_cache_min_compile_time_secs": 0.5,
    "jax_persistent_cache_min_entry_size_bytes": -1,
    # Bounded (the cache outlives the session), and written under a file lock: several
    # workers and processes share it.
    "jax_compilation_cache_max_size": 2 * 1024**3,
}


def pytest_configure(config):
    import jax

    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not cache_dir:  # the main process (xdist workers inherit the environment)
        cache = getattr(config, "cache", None)
        cache_dir = str(
            cache.mkdir("jax_compilation_cache")
            if cache is not None
            else tempfile.mkdtemp(prefix="mcjax-tests-jax-cache-", dir=_SESSION_HOME)
        )
    settings = {**_JAX_SETTINGS, "jax_compilation_cache_dir": cache_dir}
    for name, value in settings.items():
        jax.config.update(name, value)
        # The processes tests start read the same settings from their environment.
        os.environ[name.upper()] = str(int(value) if isinstance(value, bool) else value)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # The tests of the session's tiny run go to one xdist worker (once pytest-xdist's
    # loadgroup works with pytest 9 again: pytest-xdist#1386; until then the workers share
    # the run through a file lock, see tiny_run).
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_run"))


# --- The tiny run ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A finished tiny digits run (:func:`support.tiny.digits_config`): ``workdir`` holds
    every checkpoint (``CHECKPOINT_STEPS``) and every output; do not change it (copy it)."""

    config: object
    workdir: object
    summary: dict

    @property
    def digest(self) -> str:
        """The final state's digest, which every resumed or repeated run must reproduce."""
        return self.summary["state_digest"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The session's tiny run, trained by the first xdist worker that needs it.

    The others wait for it on a file lock in the session's shared temporary directory
    and read it (its tests only copy and read the workdir).
    """
    import fcntl
    import json

    from support import tiny, workdirs

    from mcjax.training import loop
    from mcjax.training.config import from_config_dict

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    workdir = shared / "tiny_run"
    config = tiny.digits_config()
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if (workdir / "summary.json").exists():
            with open(workdir / "summary.json") as f:
                summary = json.load(f)
        else:
            shutil.rmtree(workdir, ignore_errors=True)  # a worker that died while training
            summary = loop.train_and_evaluate(from_config_dict(config), str(workdir))
    assert workdirs.checkpoint_steps(workdir) == tiny.CHECKPOINT_STEPS
    return TinyRun(config, workdir, summary)


# --- Shared jitted functions -----------------------------------------------------------


@pytest.fixture(scope="session")
def jit_init():
    """``mcjax.models.init(key, net)`` jitted (``net`` static), one for the session.

    Tests that build the same network share its compiled program, and none pays for the
    eager dispatch of every initializer op.
    """
    import jax

    from mcjax import models

    return jax.jit(models.init, static_argnums=1)


@pytest.fixture(scope="session")
def jit_apply():
    """``mcjax.models.apply`` jitted (``net`` and ``train`` static), one for the session:
    the eager dispatch of a network's ops took seconds where its compile takes one."""
    import jax

    from mcjax import models

    return jax.jit(models.apply, static_argnames=("net", "train"))
