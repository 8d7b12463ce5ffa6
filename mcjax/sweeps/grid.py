"""Grid axes, their cross product, which values apply, and run names.

A *point* is an ordered ``{field: value}`` dict of config overrides, ``field`` a dotted
path below ``config`` (``"model.fan_in"``) and ``value`` the text a command line would
give (``"4"``), exactly what ``--config.FIELD=VALUE`` passes to ``python -m mcjax.main``.
An *axis* is a list of partial points: ``--grid model.fan_in=1,4`` is
``[{"model.fan_in": "1"}, {"model.fan_in": "4"}]``; a preset's tied axis such as
``[{"model.connectivity": "full"}, {"model.connectivity": "learned", "model.fan_in": "1"}]``
varies several fields together. The grid is the cross product of its axes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence

Point = dict[str, str]
Axis = list[Point]

_OPEN, _CLOSE = "([{", ")]}"


def split_values(text: str) -> list[str]:
    """Splits ``V1,V2,...`` on the commas outside brackets and quotes.

    ``"full,learned"`` -> ``["full", "learned"]``; ``"{29,8,8},{29,64,8}"`` ->
    ``["{29,8,8}", "{29,64,8}"]`` (the paper's notation, which ``get_architecture``
    accepts); ``"(1,1,1,1),(2,2,2,2)"`` -> two tuples.

    Raises:
      ValueError: on unbalanced brackets or quotes, or an empty value.
    """
    values, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {char!r} in {text!r}")
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    values.append("".join(current).strip())
    if any(not v for v in values):
        raise ValueError(f"empty value in {text!r}")
    return values


def parse_grid_flag(text: str) -> tuple[str, list[str]]:
    """``"model.fan_in=1,4"`` -> ``("model.fan_in", ["1", "4"])``.

    Raises:
      ValueError: without ``=``, with an empty field, or on bad values.
    """
    field, sep, values = text.partition("=")
    field = field.strip().removeprefix("config.")
    if not sep or not field or not re.fullmatch(r"[A-Za-z_][\w.]*", field):
        raise ValueError(f"--grid {text!r}: expected FIELD=V1,V2,... (e.g. model.fan_in=1,4)")
    return field, split_values(values)


def field_axis(field: str, values: Sequence[str]) -> Axis:
    """The axis of one field; a value given twice counts once."""
    return [{field: v} for v in dict.fromkeys(values)]


def expand(axes: Sequence[Axis]) -> list[Point]:
    """The cross product of ``axes``, in order (the last axis varies fastest).

    Raises:
      ValueError: when two axes set the same field.
    """
    seen: dict[str, int] = {}
    for index, axis in enumerate(axes):
        for field in {f for point in axis for f in point}:
            if field in seen:
                raise ValueError(f"{field} is set by two grid axes")
            seen[field] = index
    points = []
    for combo in itertools.product(*axes):
        merged: Point = {}
        for part in combo:
            merged.update(part)
        points.append(merged)
    return points


# Which fields a run ignores, given its resolved config: a grid over them would only
# repeat the same run. One place for the rule; the reason is shown to the user.
_APPLIES: dict[str, tuple[Callable, str]] = {
    "model.fan_in": (
        lambda config: config.model.connectivity != "full",
        "connectivity 'full' reads every branch",
    ),
    "mask_learning_rate": (
        lambda config: config.model.connectivity in ("learned", "real"),
        "only 'learned' and 'real' learn masks",
    ),
    "model.mask_init": (
        lambda config: config.model.connectivity in ("learned", "real"),
        "only 'learned' and 'real' have real-valued masks",
    ),
}


def applies(field: str, config) -> bool:
    """Whether a run with ``config`` depends on ``field``."""
    rule = _APPLIES.get(field)
    return rule is None or bool(rule[0](config))


def why_not(field: str) -> str:
    return _APPLIES[field][1] if field in _APPLIES else ""


def short_names(fields: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted field, or the whole path where two would clash."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last, strict=True)}


def _clean(value: str) -> str:
    value = value.strip().strip("{}()[]'\"").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", value) or "-"


def run_name(point: Mapping[str, str], seed: int, names: Mapping[str, str]) -> str:
    """``"connectivity=learned,fan_in=4,seed=0"``: a run's directory under the sweep.

    ``names`` maps each field to its short name (:func:`short_names`); values are made
    safe for a path (``"29,8,8"`` -> ``"29-8-8"``).
    """
    parts = [f"{names[field]}={_clean(value)}" for field, value in point.items()]
    return ",".join([*parts, f"seed={seed}"])
