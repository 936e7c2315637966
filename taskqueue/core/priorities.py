"""Named priorities and their integer values on Django Tasks' -100..100 scale."""

from __future__ import annotations

from taskqueue.core.payloads import short_repr
from taskqueue.exceptions import InvalidTaskOption

PRIORITIES: dict[str, int] = {"critical": 100, "high": 50, "normal": 0, "low": -50}
MIN_PRIORITY = -100
MAX_PRIORITY = 100


def resolve_priority(value: str | int) -> int:
    """Turn a priority name or integer into the integer stored on the task."""
    if isinstance(value, bool):
        raise InvalidTaskOption(f"priority must be a name or an integer, got {value!r}")
    if isinstance(value, str):
        try:
            return PRIORITIES[value]
        except KeyError:
            names = ", ".join(repr(name) for name in PRIORITIES)
            raise InvalidTaskOption(
                f"unknown priority {short_repr(value)}: use one of {names} or an integer "
                f"from {MIN_PRIORITY} to {MAX_PRIORITY}"
            ) from None
    if isinstance(value, int):
        if not MIN_PRIORITY <= value <= MAX_PRIORITY:
            raise InvalidTaskOption(
                f"priority {short_repr(value)} is out of range {MIN_PRIORITY}..{MAX_PRIORITY}"
            )
        return value
    raise InvalidTaskOption(f"priority must be a name or an integer, got {short_repr(value)}")


def priority_label(value: int) -> str:
    """Return the name of a priority value, or the number itself when it has none."""
    for name, number in PRIORITIES.items():
        if number == value:
            return name
    return str(value)
