"""The resume rules: which config fields may change when a run is resumed (docs/design.md §10).

A resumed run must continue the run in its workdir exactly. Every config field is compared
with the config the run is running with (:func:`recorded_config`) by
:func:`check_workdir_matches`, and the seed, model, data set and the data's fingerprint with
the checkpoint's own metadata (:func:`check_checkpoint_meta`), except
:data:`RESUMABLE_FIELDS`. ``--force_resume`` skips both.

The run's history of configs: ``config.json`` is the config it started with and is never
rewritten; each later start in the workdir (a resume, or a restart before the first
checkpoint) appends one record to ``resume_log.jsonl`` (:func:`record_start`): the step,
whether it was forced, every field that changed (allowed or forced) with both values, the
data's fingerprints when they differ, and the config in effect from then on.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from mcjax import safe_files
from mcjax.training.config_fields import LONGEST_SHOWN, shown
from mcjax.training.metric_writers import read_records
from mcjax.training.validation import ConfigError

__all__ = [
    "CONFIG_NAME",
    "RESUMABLE_FIELDS",
    "RESUME_LOG_NAME",
    "check_checkpoint_meta",
    "check_workdir_matches",
    "record_start",
    "recorded_config",
]

CONFIG_NAME = "config.json"
RESUME_LOG_NAME = "resume_log.jsonl"

# The config fields that may change when a run is resumed: bookkeeping that does not
# change what is trained, how the same function of the same parameters is computed
# (mcjax.blocks.BRANCH_IMPLS; parameters stay float32), and the initial values, which a
# resumed run reads from its checkpoint instead. Every other field is compared.
RESUMABLE_FIELDS = (
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
    "debug_inject_nan_at_step",
    "data.data_dir",
    "model.branch_impl",
    "model.dtype",
    "model.zero_init_residual",
)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.fan_in": 4, ...}`` of a nested dict, in its order."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_json(path: str, what: str, override: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} ({what}) cannot be read ({error}); {override}.") from error


_OVERRIDE = "pass --force_resume to resume it anyway, or use a new --workdir"


def recorded_config(workdir: str) -> tuple[dict, str] | None:
    """``(config, where)``: the config the run in ``workdir`` runs with, or None if none.

    The ``config`` of the last record of ``resume_log.jsonl`` if there is one, else
    ``config.json``; ``where`` names the file (for messages).

    Raises:
      ConfigError: the file cannot be read or does not hold a config.
    """
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(path):
        return None
    log_path = os.path.join(workdir, RESUME_LOG_NAME)
    if os.path.exists(log_path):
        try:
            records = [r for r in read_records(log_path) if isinstance(r.get("config"), dict)]
        except OSError as error:
            raise ConfigError(
                f"{log_path} (the history of the run in this workdir) cannot be read "
                f"({error}); {_OVERRIDE}."
            ) from error
        if records:
            return records[-1]["config"], f"the last record of {log_path}"
    previous = _read_json(path, "the config of the run in this workdir", _OVERRIDE)
    if not isinstance(previous, dict):
        raise ConfigError(f"{path} does not hold a config; {_OVERRIDE}.")
    return previous, path


def _compared(field: str, before: dict, current: dict) -> bool:
    """Whether a difference in ``field`` refuses a resume (see check_workdir_matches)."""
    if field in RESUMABLE_FIELDS or field not in before or field not in current:
        return False
    both_full = before.get("model.connectivity") == "full" == current.get("model.connectivity")
    return not (field == "model.fan_in" and both_full)


def check_workdir_matches(workdir: str, config: Any, *, force: bool = False) -> None:
    """Refuses to resume the run in ``workdir`` with a config that would train another run.

    The config the run runs with (:func:`recorded_config`: ``config.json``, written by
    :func:`mcjax.training.loop.train_and_evaluate` as ``config.to_dict()``, updated by
    the records of ``resume_log.jsonl``) is compared field by field with ``config``
    except :data:`RESUMABLE_FIELDS`, the bookkeeping that does not change what is
    trained (logging, evaluation and checkpoint intervals, checkpoints kept, the eval
    batch, the data's location) and the two ``config.model`` fields that choose how the
    same function of the same parameters is computed. So the network, the data, the
    schedule (``phase_epochs``, ``batch_size``, learning rates, ...), the optimizer and
    the seed must be those of the run that is resumed. ``fan_in`` is not compared when
    both runs use connectivity ``'full'`` (which ignores it), nor is a field that one
    of the two configs does not have (a file written before the field existed).

    Args:
      workdir: the run's directory.
      config: the config about to run.
      force: skip the check (``--force_resume``).

    Raises:
      ConfigError: one sentence naming the first differing field, both values, and
        how to override (``--force_resume``) or avoid it (a new ``--workdir``); also
        when the recorded config cannot be read.
    """
    if force:
        return
    recorded = recorded_config(workdir)
    if recorded is None:
        return
    previous, where = recorded
    current = _flat(_plain(config.to_dict() if hasattr(config, "to_dict") else dict(config)))
    before = _flat(previous)
    for field, now in current.items():
        if not _compared(field, before, current):
            continue
        then = before[field]
        if now != then:
            restore = tuple(then) if isinstance(then, list) else then
            raise ConfigError(
                f"config.{field} is {shown(now)}, but the run in {workdir} used "
                f"{shown(then)} (see {where}); a resumed run must continue that run "
                f"exactly: set --config.{field}={str(restore)[:LONGEST_SHOWN]}, {_OVERRIDE}."
            )


def check_checkpoint_meta(meta: dict, expected: dict, step: int) -> None:
    """Refuses a checkpoint made with another seed, model, data set or data.

    ``meta`` is the checkpoint's, ``expected`` this run's (the same keys). Keys the
    checkpoint lacks (written before they were recorded) are not compared.

    Raises:
      ConfigError: one sentence naming what differs and how to override it.
    """
    for key in ("seed", "data", "model"):
        then, now = meta.get(key), expected[key]
        if key == "model" and isinstance(then, dict):
            then = {k: v for k, v in then.items() if f"model.{k}" not in RESUMABLE_FIELDS}
            now = {k: v for k, v in now.items() if f"model.{k}" not in RESUMABLE_FIELDS}
        if then is not None and json.loads(json.dumps(now)) != then:
            raise ConfigError(
                f"config.{key} is {shown(now)}, but the checkpoint of step {step} was made "
                f"with {shown(then)}; a resumed run must continue that run exactly: pass "
                "--force_resume to resume it anyway, or use a new --workdir."
            )
    then, now = meta.get("data_fingerprint"), expected.get("data_fingerprint")
    if then is not None and now is not None and then != now:
        raise ConfigError(
            f"the data in config.data.data_dir={expected.get('data_dir')!r} is not the data "
            f"the checkpoint of step {step} was trained on (fingerprint {now[:23]}, "
            f"recorded {then[:23]}), though the data set ({expected['data']}) is the same; "
            "a resumed run must continue that run exactly: point data_dir back at that "
            "data, pass --force_resume to train on this data from here on (recorded in "
            f"{RESUME_LOG_NAME}), or use a new --workdir."
        )


def record_start(
    workdir: str,
    config: Any,
    *,
    step: int,
    forced: bool,
    data_fingerprints: tuple[str | None, str] | None = None,
) -> None:
    """Writes the run's history at a start in ``workdir`` (see the module docstring).

    The first start writes ``config.json``. Every later one (a ``config.json``
    exists) appends a record to ``resume_log.jsonl`` instead: ``step`` (where training
    continues), ``time``, ``forced``, ``changes`` (``{field: [before, now]}``, every
    field that differs from the recorded config, allowed or forced), the
    ``data_fingerprint`` ``[recorded, now]`` when they differ, and ``config`` (the
    whole config in effect from here on).

    Args:
      workdir: the run's directory.
      config: the config this start runs with.
      step: the step training continues from (0: no usable checkpoint).
      forced: whether ``--force_resume`` was given.
      data_fingerprints: ``(the checkpoint's, this run's)`` data fingerprints.
    """
    current = _plain(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    recorded = recorded_config(workdir) if os.path.exists(workdir) else None
    if recorded is None:
        safe_files.write_json(os.path.join(workdir, CONFIG_NAME), current, indent=1)
        return
    before, now = _flat(recorded[0]), _flat(current)
    changes = {
        field: [before.get(field), now.get(field)]
        for field in sorted(set(before) | set(now))
        if before.get(field) != now.get(field)
    }
    record = {
        "step": int(step),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "forced": bool(forced),
        "changes": changes,
    }
    recorded_data, data_now = data_fingerprints or (None, None)
    if recorded_data is not None and recorded_data != data_now:
        record["data_fingerprint"] = [recorded_data, data_now]
    record["config"] = current
    line = json.dumps(record) + "\n"
    safe_files.append_bytes(os.path.join(workdir, RESUME_LOG_NAME), line.encode())
