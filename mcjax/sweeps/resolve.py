"""A run's config, resolved in this process exactly as ``python -m mcjax.main`` will.

The config file and the ``--config.FIELD=VALUE`` overrides go through ml_collections'
own flag parser (a private ``absl.flags.FlagValues``), so values are parsed the same way
as by the run; nothing here touches an accelerator (JAX's backend is not started).
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import unicodedata
import warnings
from collections.abc import Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

# The fields a resumed or skipped run may differ in: the training program's one list.
from mcjax.training.config import RESUMABLE_FIELDS

# Unicode's control characters and its line and paragraph separators: what may not go
# into a line of a generated script or of a one-line message.
_CONTROL = ("Cc", "Zl", "Zp")

# The largest JSON file the sweep reads (a sweep.json of --max_runs runs is a few MB).
_MAX_JSON_BYTES = 256 << 20


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
    """The fields in which a run's saved ``config.json`` differs from ``config``, as
    ``"field: saved -> now"``, by the training program's rule
    (:func:`mcjax.training.config.check_workdir_matches`): every field but
    :data:`~mcjax.training.config.RESUMABLE_FIELDS`, not ``fan_in`` when both use
    ``full``, and not a field the saved config does not have (written before it existed)."""
    now = _flatten(json.loads(json.dumps(config.to_dict())))  # tuples as JSON lists
    before = _flatten(saved)
    if now.get("model.connectivity") == "full" == before.get("model.connectivity"):
        before.pop("model.fan_in", None)  # ignored by 'full'
        now.pop("model.fan_in", None)
    return [
        f"{field}: {before[field]!r} -> {value!r}"
        for field, value in now.items()
        if field not in RESUMABLE_FIELDS and field in before and before[field] != value
    ]


def canonical_value(config, field: str) -> str:
    """The parsed value of the dotted ``field`` of ``config`` as a JSON text: ``2``,
    ``02`` and ``+2`` given for an int field all read ``"2"``."""
    value = config
    for part in field.split("."):
        value = value[part]
    return json.dumps(value, sort_keys=True, default=repr)


def read_json(path: str, *, limit: int = _MAX_JSON_BYTES):
    """The JSON value in the regular file ``path``.

    Opened without blocking (a FIFO planted in its place is refused, not waited on),
    and only a regular file of at most ``limit`` bytes is read.

    Raises:
      OSError: it cannot be opened or read.
      ValueError: it is not a regular file, too large, not UTF-8 or not JSON
        (``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ``ValueError``).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than {limit}")
        data = f.read(limit + 1)
    if not data.strip():
        raise ValueError("empty")
    return json.loads(data.decode("utf-8"))


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` (newline, carriage return, escape, ...; also
    Unicode's line and paragraph separators), each as Python writes it (``'\\n'``)."""
    return list(
        dict.fromkeys(repr(char)[1:-1] for char in text if unicodedata.category(char) in _CONTROL)
    )


def shown(text: str, limit: int = 400) -> str:
    """``text`` for a one-line message: control characters escaped (``\\n``), and cut
    to ``limit`` characters (``...`` and its length in bytes after)."""
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    safe = "".join(
        repr(char)[1:-1] if unicodedata.category(char) in _CONTROL else char for char in text
    )
    if len(safe) > limit:
        size = len(text.encode("utf-8", "surrogateescape"))
        safe = f"{safe[:limit]}... ({size} bytes)"
    return safe
