"""Reusable rules for one setting's value: numbers, flags and choices.

A rule is called with where the value sits (``TASKQUEUE['RETENTION']['completed']``) and the
value, and returns at most one error: the first problem found, by kind (wrong type, not
finite, out of range, not a choice), each kind with its own id.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.checks import CheckMessage

from taskqueue.checks.messages import (
    NOT_A_CHOICE,
    NOT_FINITE,
    OUT_OF_RANGE,
    UNKNOWN_SETTING,
    WRONG_TYPE,
    Rule,
    error,
    guarded,
    shown,
)
from taskqueue.core.limits import MAX_ATTEMPTS_LIMIT, MAX_DELAY_SECONDS, MAX_DELAY_TEXT

# What the database keeps exactly in an integer column, and what every number converts to
# a float without overflowing.
LARGEST_NUMBER = 2**63 - 1
LARGEST_NUMBER_TEXT = "2**63 - 1 (the 64-bit integer range)"


def is_number(value: Any) -> bool:
    """True for an int or float, False for a bool (``True`` is not a count of seconds)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number:
    """A number from ``minimum`` (excluded unless ``minimum_included``) to ``maximum``."""

    expectation: str  # what follows "must be" in the message
    integer: bool = False
    minimum: float = 0
    minimum_included: bool = False
    maximum: float = LARGEST_NUMBER
    maximum_text: str = LARGEST_NUMBER_TEXT
    none_allowed: bool = False

    def __call__(self, where: str, value: Any) -> list[CheckMessage]:
        if value is None and self.none_allowed:
            return []
        problem = f"{where} must be {self.expectation}, got {shown(value)}"
        if not is_number(value):
            return [error(WRONG_TYPE, f"{problem}.")]
        # math.isfinite would overflow on a huge int: only floats can be NaN or infinite.
        if isinstance(value, float) and not math.isfinite(value):
            return [
                error(
                    NOT_FINITE,
                    f"{problem}: NaN and infinities are not numbers taskqueue can use.",
                    hint="NaN compares false with everything and infinity never comes: a "
                    "duty timed by either never runs or never stops. Use a finite number.",
                )
            ]
        if self.integer and not isinstance(value, int):
            return [error(WRONG_TYPE, f"{problem}.")]
        if value < self.minimum or (value == self.minimum and not self.minimum_included):
            return [error(OUT_OF_RANGE, f"{problem}.")]
        if value > self.maximum:
            return [error(OUT_OF_RANGE, f"{problem}, over the maximum of {self.maximum_text}.")]
        return []


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False``, nothing that merely looks like one (1, "yes")."""

    def __call__(self, where: str, value: Any) -> list[CheckMessage]:
        if isinstance(value, bool):
            return []
        return [error(WRONG_TYPE, f"{where} must be True or False, got {shown(value)}.")]


@dataclass(frozen=True)
class Choice:
    """One of a few strings (or None when ``none_allowed``)."""

    choices: tuple[str, ...]
    expectation: str = ""  # defaults to "one of 'a', 'b'"
    none_allowed: bool = False

    def __call__(self, where: str, value: Any) -> list[CheckMessage]:
        if value is None and self.none_allowed:
            return []
        expectation = self.expectation or "one of " + ", ".join(map(repr, self.choices))
        problem = f"{where} must be {expectation}, got {shown(value)}."
        # The type first: comparing arbitrary objects with == may run their own code.
        if not isinstance(value, str):
            return [error(WRONG_TYPE, problem)]
        if value not in self.choices:
            return [error(NOT_A_CHOICE, problem)]
        return []


FLAG = Flag()
SECONDS = Number(
    "a positive number of seconds", maximum=MAX_DELAY_SECONDS, maximum_text=MAX_DELAY_TEXT
)
SECONDS_OR_ZERO = Number(
    "a number of seconds >= 0",
    minimum_included=True,
    maximum=MAX_DELAY_SECONDS,
    maximum_text=MAX_DELAY_TEXT,
)
POSITIVE_INTEGER = Number("a positive integer", integer=True)
POSITIVE_NUMBER = Number("a positive number")
ATTEMPTS = Number(
    "a positive integer",
    integer=True,
    maximum=MAX_ATTEMPTS_LIMIT,
    maximum_text=f"{MAX_ATTEMPTS_LIMIT} attempts",
)


def unknown_key(msg: str, key: Any, known: Iterable[str], noun: str = "keys") -> CheckMessage:
    """E001 for a key nobody reads, with the closest known name when there is one."""
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1) if isinstance(key, str) else []
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return error(UNKNOWN_SETTING, msg, hint=f"{hint}Known {noun}: {', '.join(names)}.")


def sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    """The keys in a stable order whatever their types (names may be ints or None)."""
    return sorted(mapping, key=lambda key: (not isinstance(key, str), shown(key)))


def check_dict(
    where: str,
    value: Any,
    rules: Mapping[str, Rule],
    known: Iterable[str],
    expectation: str = "a dict",
) -> list[CheckMessage]:
    """A dict whose keys are all ``known``, each present key checked by its rule."""
    if not isinstance(value, dict):
        return [error(WRONG_TYPE, f"{where} must be {expectation}, got {shown(value)}.")]
    known = set(known)
    messages = [
        unknown_key(f"Unknown key {shown(key)} in {where}.", key, known)
        for key in sorted_keys(value)
        if key not in known
    ]
    for key, rule in rules.items():
        if key in value:
            messages += guarded(rule, f"{where}[{key!r}]", value[key])
    return messages
