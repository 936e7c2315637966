"""The ids of taskqueue's system checks, and the safe wording of their messages.

Each id names one kind of problem, so a user searching for it finds one explanation
(docs/checks.md lists them). Values are shown with ``shown()``, which never raises and never
prints an unbounded or unprintable value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.checks import CheckMessage, Error

# Errors: manage.py check fails and run_worker refuses to start.
UNKNOWN_SETTING = "taskqueue.E001"
WRONG_TYPE = "taskqueue.E002"
DATABASE = "taskqueue.E003"
SCHEDULE = "taskqueue.E004"
NOT_FINITE = "taskqueue.E005"
OUT_OF_RANGE = "taskqueue.E006"
NOT_A_CHOICE = "taskqueue.E007"
BAD_QUEUE_NAME = "taskqueue.E008"
SHORT_CREDENTIAL = "taskqueue.E009"
BAD_URL = "taskqueue.E010"
CHECK_FAILED = "taskqueue.E011"
# Warnings: reported, nothing refused.
SQLITE_WITHOUT_WAL = "taskqueue.W001"
STALE_TOO_CLOSE = "taskqueue.W002"
QUEUE_NOT_SERVED = "taskqueue.W003"

SETTINGS_OBJECT = "settings.TASKQUEUE"
# Longest repr shown in a message; longer values are cut, ending with "...".
SHOWN_LENGTH = 120

# One rule checks one value; ``where`` names it, as in "TASKQUEUE['RETENTION']['cron']".
Rule = Callable[[str, Any], list[CheckMessage]]


def error(id_: str, msg: str, hint: str | None = None) -> Error:
    """An error about ``settings.TASKQUEUE`` with one of the ids above."""
    return Error(msg, hint=hint, obj=SETTINGS_OBJECT, id=id_)


def shown(value: Any) -> str:
    """``repr(value)`` for a message: bounded, and never raising whatever the value is."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # Python refuses to print an integer of over 4,300 digits; none is worth reading.
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # any __repr__ may fail; the check must still report
        return f"{type_name(value)} object"
    if not isinstance(text, str):
        return f"{type_name(value)} object"
    if len(text) > SHOWN_LENGTH:
        return text[: SHOWN_LENGTH - 3] + "..."
    return text


def clipped(text: str, length: int = 300) -> str:
    """``text`` cut to ``length`` characters (an exception's message may quote a whole value)."""
    return text if len(text) <= length else text[: length - 3] + "..."


def type_name(value: Any) -> str:
    """'a str', 'an int', 'None': how a value's type reads in a message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def guarded(rule: Rule, where: str, value: Any) -> list[CheckMessage]:
    """Run ``rule``; a rule that raises is reported as E011 instead of crashing the check."""
    try:
        return rule(where, value)
    except Exception as exc:  # manage.py check must report, never crash
        return [
            error(
                CHECK_FAILED,
                f"{where} could not be checked: the check raised {type(exc).__name__}.",
                hint="Set it to a plain value of the documented type; please report this "
                "as a taskqueue bug, with the type of the value.",
            )
        ]
