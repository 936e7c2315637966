"""The largest delays, times and counts taskqueue stores, and their checks.

A task due in the year 33715 is stored by PostgreSQL but cannot be read back by psycopg (or
by Python's ``datetime``): the admin and every query over it would fail. So every delay and
``run_at`` is bounded, at enqueue, at retry and in retry strategies, with an error naming
the value and the bound.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from taskqueue.core.payloads import short_repr
from taskqueue.exceptions import InvalidTaskOption

# Ten years (with leap days): far beyond any real retry or deferral, far inside what every
# database and Python's datetime can hold.
MAX_DELAY = timedelta(days=3653)
MAX_DELAY_SECONDS = MAX_DELAY.total_seconds()
MAX_DELAY_TEXT = "10 years (315,619,200 s)"
# Attempts are counted in a 32-bit column; no real task needs more than this many.
MAX_ATTEMPTS_LIMIT = 1000


def check_delay_seconds(value: Any, what: str = "delay") -> float:
    """Return ``value`` (seconds or a timedelta) as float seconds, or raise naming the bound."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTaskOption(
            f"{what} must be a number of seconds or a timedelta, got {short_repr(value)}"
        )
    if isinstance(value, float) and math.isnan(value):
        raise InvalidTaskOption(f"{what} is NaN: pass a number of seconds")
    if value < 0:
        raise InvalidTaskOption(f"{what} must not be negative, got {short_repr(value)}")
    if value > MAX_DELAY_SECONDS:
        shown = "infinite" if value == math.inf else _shown_seconds(value)
        raise InvalidTaskOption(f"{what} is {shown}, over the maximum of {MAX_DELAY_TEXT}")
    return float(value)


def check_run_at(run_at: datetime, now: datetime | None = None) -> datetime:
    """Return ``run_at`` if it is at most ``MAX_DELAY`` ahead of ``now`` (aware datetimes)."""
    now = now or datetime.now(UTC)
    try:
        ahead = run_at - now
    except OverflowError:
        ahead = MAX_DELAY + timedelta(days=1)
    if ahead > MAX_DELAY:
        raise InvalidTaskOption(
            f"run_at {run_at.isoformat()} is more than {MAX_DELAY_TEXT} ahead: "
            "taskqueue stores times at most that far in the future"
        )
    try:
        run_at.astimezone(UTC)
    except OverflowError:
        raise InvalidTaskOption(
            f"run_at {run_at.isoformat()} is out of the range of storable times"
        ) from None
    return run_at


def check_max_attempts(value: Any, what: str = "max_attempts") -> int:
    """Return ``value`` if it is a whole number of attempts from 1 to ``MAX_ATTEMPTS_LIMIT``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidTaskOption(f"{what} must be a positive integer, got {short_repr(value)}")
    if value > MAX_ATTEMPTS_LIMIT:
        raise InvalidTaskOption(
            f"{what} must be at most {MAX_ATTEMPTS_LIMIT}, got {short_repr(value)}"
        )
    return value


def check_timeout(value: Any, what: str = "timeout") -> float:
    """Return ``value`` as float seconds if it is finite, positive and at most ``MAX_DELAY``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        # "not > 0" also catches NaN, which compares false with everything.
        raise InvalidTaskOption(
            f"{what} must be a positive number of seconds, got {short_repr(value)}"
        )
    if value > MAX_DELAY_SECONDS:
        shown = "infinite" if value == math.inf else _shown_seconds(value)
        raise InvalidTaskOption(f"{what} is {shown}, over the maximum of {MAX_DELAY_TEXT}")
    return float(value)


def _shown_seconds(value: int | float) -> str:
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"an integer of {value.bit_length()} bits"
    return f"{float(value):.6g} s"
