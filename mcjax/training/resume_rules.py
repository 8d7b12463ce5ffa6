"""The resume rules: which config fields may change when a run is resumed (docs/design.md §10).

A resumed run must continue the run in its workdir exactly. Every config field is compared
with the workdir's ``config.json`` (:func:`check_workdir_matches`) and the seed, model and
data set with the checkpoint's own metadata (:func:`check_checkpoint_meta`, for a workdir
whose ``config.json`` is gone), except :data:`RESUMABLE_FIELDS`. ``--force_resume`` skips
both.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mcjax.training.validation import ConfigError

__all__ = ["RESUMABLE_FIELDS", "check_checkpoint_meta", "check_workdir_matches"]

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


def check_workdir_matches(workdir: str, config: Any, *, force: bool = False) -> None:
    """Refuses to resume the run in ``workdir`` with a config that would train another run.

    ``workdir/config.json`` is written by :func:`mcjax.training.loop.train_and_evaluate`
    (``config.to_dict()``). When it exists, every field is compared with ``config``
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
        when ``config.json`` cannot be read.
    """
    if force:
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    override = "pass --force_resume to resume it anyway, or use a new --workdir"
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{path} (the config of the run in this workdir) cannot be read ({error}); {override}."
        ) from error
    if not isinstance(previous, dict):
        raise ConfigError(f"{path} does not hold a config; {override}.")

    current = _flat(_plain(config.to_dict() if hasattr(config, "to_dict") else dict(config)))
    before = _flat(previous)
    both_full = before.get("model.connectivity") == "full" == current.get("model.connectivity")
    for field, now in current.items():
        if field in RESUMABLE_FIELDS or field not in before:
            continue
        if field == "model.fan_in" and both_full:
            continue
        then = before[field]
        if now != then:
            shown = tuple(then) if isinstance(then, list) else then
            raise ConfigError(
                f"config.{field} is {now!r}, but the run in {workdir} used {then!r} "
                f"(see {path}); a resumed run must continue that run exactly: set "
                f"--config.{field}={shown}, {override}."
            )


def check_checkpoint_meta(meta: dict, expected: dict, step: int) -> None:
    """Refuses a checkpoint made with another seed, model or data set (config.json aside)."""
    for key in ("seed", "data", "model"):
        then, now = meta.get(key), expected[key]
        if key == "model" and isinstance(then, dict):
            then = {k: v for k, v in then.items() if f"model.{k}" not in RESUMABLE_FIELDS}
            now = {k: v for k, v in now.items() if f"model.{k}" not in RESUMABLE_FIELDS}
        if then is not None and json.loads(json.dumps(now)) != then:
            raise ConfigError(
                f"config.{key} is {now!r}, but the checkpoint of step {step} was made with "
                f"{then!r}; a resumed run must continue that run exactly: pass --force_resume "
                "to resume it anyway, or use a new --workdir."
            )
