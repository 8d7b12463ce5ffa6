"""Checkpoints of the training state with orbax's ``CheckpointManager``.

Each checkpoint holds the whole state (step, params, BN statistics, optimizer
state, fixed connectivity) and a JSON ``meta`` item (phase, model config, PRNG
settings). The PRNG keys are not stored: every draw is a pure function of
``config.seed`` and the step.

Orbax makes a save atomic (a save killed half-way leaves a
``*.orbax-checkpoint-tmp`` directory that is never restored) but does not
check integrity: flipped bytes in a finished checkpoint restore silently.
So, once a save has finished, the sha256 of every file of its step directory
goes into a manifest, ``workdir/checkpoint_sums/<step>.sha256.json`` (outside
orbax's directory, which must hold nothing but orbax's own step directories).
:meth:`Checkpointer.restore_latest` checks the newest step against its
manifest and lets orbax restore it; a step that fails either is moved aside to
``workdir/corrupt_checkpoints/<step>-<time>`` with a warning, and the step
before it is tried (then a fresh start). A step without a manifest (the process
died after orbax finished the save but before the manifest was written) is
restored *unverified* if orbax can read it, with a warning. A step that is intact
but of another layout (another network: a shape, dtype or entry differs from the
state the run builds) is never taken for damage: :class:`CheckpointMismatch` is
raised and no file is touched.

In a multi-process job every process takes part in each save and restore (orbax
coordinates the writes); only the primary process (0) writes the manifests and
moves corrupt steps aside, and the processes agree on the step they restore.

A save that the file system refuses (a full disk, an unwritable or replaced
directory) raises ``OSError`` naming the step's directory, from :meth:`Checkpointer.save`,
:meth:`~Checkpointer.wait` or :meth:`~Checkpointer.close`, whichever first sees it
(orbax saves in background threads and reports there as a ``ValueError``); the
checkpoints finished before it are untouched (orbax never renames an unfinished step
into place).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from mcjax import safe_files
from mcjax.training import distributed, filesystem

MANIFEST_SUFFIX = ".sha256.json"


def directory_checksums(directory: str) -> dict[str, str]:
    """sha256 of every file under ``directory``, keyed by its path relative to it."""
    sums = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            sums[os.path.relpath(path, directory)] = digest.hexdigest()
    return dict(sorted(sums.items()))


class CorruptCheckpoint(Exception):
    """A step directory does not match its checksum manifest."""


class CheckpointMismatch(Exception):
    """A readable checkpoint holds another structure, shape or dtype than this run's state.

    Not corruption: the checkpoint is of another network or state layout. Nothing is
    moved; the message names the first differing entry.
    """


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaves(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype)}`` of a state or of orbax's tree metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        _path_name(path): (tuple(leaf.shape), str(jax.numpy.dtype(leaf.dtype)))
        for path, leaf in leaves
    }


def describe_mismatch(saved_tree, abstract_state) -> str | None:
    """The first difference between a saved state's layout and ``abstract_state``'s, or None."""
    saved, wanted = _leaves(saved_tree), _leaves(abstract_state)
    for name in sorted(set(saved) | set(wanted)):
        if name not in wanted:
            return f"it holds {name}, which this run's state does not have"
        if name not in saved:
            return f"it lacks {name}, which this run's state has"
        if saved[name] != wanted[name]:
            (shape_s, dtype_s), (shape_w, dtype_w) = saved[name], wanted[name]
            return (
                f"{name} is {dtype_s}{list(shape_s)} in it and {dtype_w}{list(shape_w)} in this run"
            )
    return None


@contextlib.contextmanager
def _os_errors(path: str):
    """Re-raises orbax's report of a file-system error as ``OSError`` naming ``path``."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        found = filesystem.as_os_error(error)
        if found is None:
            raise
        raise OSError(found.errno, found.strerror, path) from error


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, *, keep: int = 2, is_primary: bool = True):
        workdir = os.path.abspath(workdir)
        self.directory = os.path.join(workdir, "checkpoints")
        self.sums_directory = os.path.join(workdir, "checkpoint_sums")
        self.corrupt_directory = os.path.join(workdir, "corrupt_checkpoints")
        options = ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(max(1, keep)),
        )
        # The handlers named up front (not only through the save/restore args), so that a
        # fresh manager can read a step's metadata before restoring it.
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self.is_primary = is_primary  # writes manifests, moves corrupt steps aside
        self._unrecorded: list[int] = []  # saved steps whose manifest is not written yet
        self._saving = self.directory  # the step directory of the newest save (for errors)
        self._closed = False

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def manifest_path(self, step: int) -> str:
        return os.path.join(self.sums_directory, f"{step}{MANIFEST_SUFFIX}")

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; :meth:`wait` before relying on it.

        The previous save is finished (and its manifest written) first.
        """
        self.wait()
        # A stale manifest, e.g. from a copied workdir.
        if self.is_primary and os.path.exists(self.manifest_path(step)):
            os.remove(self.manifest_path(step))
        self._saving = self.step_directory(step)
        # A checkpoints directory removed or replaced under the run: said here, before
        # orbax starts threads that would wait 300 s for a step directory never made.
        if not stat.S_ISDIR(os.lstat(self.directory).st_mode):
            raise OSError(errno.ENOTDIR, "not a directory any more", self.directory)
        with _os_errors(self._saving):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        if self.is_primary:
            self._unrecorded.append(step)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the structure, shapes and shardings of ``abstract_state``.

        No checksum check; :meth:`restore_latest` does one.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def verify(self, step: int) -> bool:
        """True if ``step`` matches its manifest, False if it has none.

        Raises:
          CorruptCheckpoint: naming the first file that is missing, extra or differs.
        """
        path = self.manifest_path(step)
        try:
            with open(path) as f:
                expected = json.load(f)["files"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptCheckpoint(f"its manifest {path} cannot be read ({error})") from error
        actual = directory_checksums(self.step_directory(step))
        for name in sorted(set(expected) | set(actual)):
            if name not in actual:
                raise CorruptCheckpoint(f"file {name} is missing")
            if name not in expected:
                raise CorruptCheckpoint(f"file {name} is not in the manifest")
            if actual[name] != expected[name]:
                raise CorruptCheckpoint(f"file {name} does not match its sha256")
        return True

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """Restores the newest step that verifies and restores; ``None`` if there is none.

        Only damage moves a step aside (see the module docstring): a checksum mismatch,
        or files orbax cannot read. A step that reads fine but holds another layout
        than ``abstract_state`` (another network) is not damage: nothing is touched.
        With several processes, a step that fails on any process is given up by all.

        Raises:
          CheckpointMismatch: the newest readable step does not fit ``abstract_state``;
            the workdir is left exactly as it was.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            failure = None
            mismatch = None
            try:
                verified = self.verify(step)
                saved_tree = self._saved_tree(step)
                if saved_tree is not None:  # else let the restore itself decide
                    mismatch = describe_mismatch(saved_tree, abstract_state)
                if mismatch is None:
                    state, meta = self.restore(step, abstract_state)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # orbax raises many kinds on a damaged checkpoint
                first_line = str(error).splitlines()[0][:300] if str(error) else ""
                failure = f"{type(error).__name__}: {first_line}"
            if distributed.any_process(failure is not None):
                moved = self._move_aside(step) if self.is_primary else self.corrupt_directory
                distributed.barrier(f"mcjax_checkpoint_moved_{step}")
                self.manager.reload()
                logging.warning(
                    "checkpoint step %d in %s is corrupt (%s); moved it to %s and "
                    "falling back to the previous checkpoint",
                    step,
                    self.directory,
                    failure or "on another process",
                    moved,
                )
                continue
            if mismatch is not None:
                raise CheckpointMismatch(
                    f"the checkpoint of step {step} in {self.directory} does not fit this "
                    f"run's network: {mismatch}; resume it with the config it was made "
                    "with, or use another --workdir"
                )
            if not verified:
                logging.warning(
                    "checkpoint step %d has no checksum manifest (the run stopped right after "
                    "saving it); restored it unverified",
                    step,
                )
            return state, meta, step
        return None

    def _saved_tree(self, step: int):
        """The tree of shapes and dtypes saved at ``step`` (orbax's metadata)."""
        metadata = self.manager.item_metadata(step)["state"]
        return None if metadata is None else getattr(metadata, "tree", metadata)

    def _move_aside(self, step: int) -> str:
        os.makedirs(self.corrupt_directory, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = os.path.join(self.corrupt_directory, f"{step}-{stamp}")
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(self.corrupt_directory, f"{step}-{stamp}-{suffix}")
        shutil.move(self.step_directory(step), target)
        if os.path.exists(self.manifest_path(step)):
            shutil.move(self.manifest_path(step), os.path.join(target + MANIFEST_SUFFIX))
        return target

    def record_finished(self) -> None:
        """Writes the manifests of finished saves, without waiting; cheap, call it every step."""
        if self._unrecorded and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the running save, then writes the manifests of the finished ones.

        Raises:
          OSError: the file system refused the save (its step directory named).
        """
        with _os_errors(self._saving):
            self.manager.wait_until_finished()
        if not self._unrecorded:
            return
        existing = set(self.manager.all_steps())
        os.makedirs(self.sums_directory, exist_ok=True)
        for step in self._unrecorded:
            if step in existing:
                self._write_manifest(step)
        self._unrecorded.clear()
        # Manifests of steps the preservation policy deleted.
        for name in os.listdir(self.sums_directory):
            stem = name[: -len(MANIFEST_SUFFIX)]
            if name.endswith(MANIFEST_SUFFIX) and stem.isdigit() and int(stem) not in existing:
                os.remove(os.path.join(self.sums_directory, name))

    def _write_manifest(self, step: int) -> None:
        manifest = {"step": step, "files": directory_checksums(self.step_directory(step))}
        safe_files.write_json(self.manifest_path(step), manifest, indent=1)

    def close(self) -> None:
        """Waits for the last save, writes its manifest and closes (once; then a no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            with _os_errors(self._saving):
                self.manager.close()
