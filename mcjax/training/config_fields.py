"""Checking a config field by field: one sentence per bad field, naming what is allowed.

:class:`FieldChecker` holds the primitives (a field's presence, type, range, choices, and
turning a constructor's ``ValueError`` into the field's sentence); the rules of mcjax's
config are in :mod:`mcjax.training.validation`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["LONGEST_SHOWN", "ConfigError", "FieldChecker", "shown"]

_MISSING = object()


class ConfigError(ValueError):
    """A config field has a value that cannot work.

    ``str(error)`` is one sentence per problem, one per line; each names the field
    (e.g. ``config.model.fan_in``), its value and what is allowed. ``problems`` holds
    the sentences as a tuple.
    """

    def __init__(self, problems: str | Sequence[str]):
        if isinstance(problems, str):
            problems = (problems,)
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (``bool`` and NaN/inf are not)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _choices(options: Sequence[Any]) -> str:
    return ", ".join(repr(option) for option in options)


# The longest value an error sentence echoes whole (a 100,000-character override is cut).
LONGEST_SHOWN = 200


def shown(value: Any, *, limit: int = LONGEST_SHOWN) -> str:
    """``repr(value)`` for an error sentence: at most ``limit`` characters, the rest counted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text)} characters)"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


class FieldChecker:
    """Collects the problems of one config."""

    def __init__(self, config: Any):
        self.config = config
        self.problems: list[str] = []

    # ------------------------------------------------------------------ helpers

    def get(self, path: str) -> Any:
        """The value at ``path`` (e.g. ``"model.fan_in"``), or ``_MISSING``."""
        node = self.config
        for part in path.split("."):
            node = getattr(node, part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    def bad(self, path: str, value: Any, allowed: str) -> None:
        """Records ``config.<path> is <value>, but it must be <allowed>.``."""
        self.problems.append(
            _sentence(f"config.{path} is {shown(value)}, but it must be {allowed}")
        )

    def present(self, path: str, allowed: str) -> Any:
        """The value at ``path``; records a problem and returns ``_MISSING`` if absent."""
        value = self.get(path)
        if value is _MISSING:
            self.problems.append(_sentence(f"config.{path} is missing; it must be {allowed}"))
        return value

    def positive_int(self, path: str) -> int | None:
        value = self.present(path, "a positive int")
        if value is _MISSING:
            return None
        if not _is_int(value) or value < 1:
            self.bad(path, value, "a positive int")
            return None
        return int(value)

    def number(self, path: str, allowed: str, ok) -> float | None:
        """A finite number for which ``ok(value)`` holds; else records ``allowed``."""
        value = self.present(path, allowed)
        if value is _MISSING:
            return None
        if not _is_number(value) or not ok(value):
            self.bad(path, value, allowed)
            return None
        return float(value)

    def choice(self, path: str, options: Sequence[str]) -> str | None:
        allowed = f"one of {_choices(options)}"
        value = self.present(path, allowed)
        if value is _MISSING:
            return None
        if not isinstance(value, str) or value not in options:
            self.bad(path, value, allowed)
            return None
        return value

    def boolean(self, path: str) -> None:
        value = self.present(path, "True or False")
        if value is not _MISSING and not isinstance(value, bool):
            self.bad(path, value, "True or False")

    def refused(self, path: str, value: Any, error: Exception, context: str = "") -> None:
        """Records an object's refusal of ``config.<path>`` as the field's sentence.

        ``"fan_in K must satisfy 1 <= K <= C = 8, got 9"`` becomes
        ``"config.model.fan_in is 9, but it must satisfy 1 <= K <= C = 8."``.
        """
        reason = re.sub(r",? got .*$", "", str(error).strip().rstrip("."), flags=re.S)
        if " must " in reason:
            text = f"config.{path} is {shown(value)}, but it must {reason.split(' must ', 1)[1]}"
        else:
            text = f"config.{path} is {shown(value)}, which is not valid: {reason}"
        self.problems.append(_sentence(text + context))
