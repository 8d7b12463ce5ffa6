"""A run's config, resolved in this process exactly as ``python -m mcjax.main`` will.

The config file and the ``--config.FIELD=VALUE`` overrides go through ml_collections'
own flag parser (a private ``absl.flags.FlagValues``), so values are parsed the same way
as by the run; nothing here touches an accelerator (JAX's backend is not started).
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

# Fields a resumed or skipped run may differ in without changing its result.
BOOKKEEPING_FIELDS = (
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
    "data.data_dir",  # the same data moved elsewhere
    "model.branch_impl",  # how the same function is computed
)


class SweepError(ValueError):
    """Problems found before anything runs, one sentence each (``problems``)."""

    def __init__(self, problems):
        self.problems = tuple([problems] if isinstance(problems, str) else problems)
        super().__init__("\n".join(self.problems))


def load_config(path: str, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
    """``path``'s ``get_config()`` with ``overrides`` (``{"model.fan_in": "4"}``) applied.

    Raises:
      SweepError: the file cannot be loaded, a field does not exist, or a value does not
        parse (one sentence).
    """
    argv = ["mcjax.sweep", f"--config={path}"]
    argv += [f"--config.{field}={value}" for field, value in overrides.items()]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, flag_values=values, lock_config=True, sys_argv=argv
    )
    try:
        with warnings.catch_warnings():
            # ml_collections loads config files with importlib's deprecated load_module().
            warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
            values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as error:
        text = " ".join(str(error).split())
        raise SweepError(f"config {path} with {_flags(overrides)}: {text}") from None
    return values.config


def _flags(overrides: Mapping[str, str]) -> str:
    return " ".join(f"--config.{f}={v}" for f, v in overrides.items()) or "no overrides"


def field_paths(config, prefix: str = "") -> list[str]:
    """Every leaf field of ``config`` as a dotted path."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out += field_paths(value, path + ".")
        else:
            out.append(path)
    return out


def missing_field(config, field: str) -> str | None:
    """``None`` when ``field`` is a leaf of ``config``; else why not, with a suggestion."""
    paths = field_paths(config)
    if field in paths:
        return None
    close = difflib.get_close_matches(field, paths, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"the config has no field {field}{hint}"


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def differences(saved: Mapping, config) -> list[str]:
    """The fields (not :data:`BOOKKEEPING_FIELDS`) in which a run's saved ``config.json``
    differs from ``config``, as ``"field: saved -> now"``."""
    now = _flatten(json.loads(json.dumps(config.to_dict())))  # tuples as JSON lists
    before = _flatten(saved)
    if now.get("model.connectivity") == "full" == before.get("model.connectivity"):
        before.pop("model.fan_in", None)  # ignored by 'full'
        now.pop("model.fan_in", None)
    return [
        f"{field}: {before.get(field, '(absent)')!r} -> {now.get(field, '(absent)')!r}"
        for field in sorted(set(now) | set(before))
        if field not in BOOKKEEPING_FIELDS and before.get(field) != now.get(field)
    ]
