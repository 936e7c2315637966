"""Cron slots in a time zone: pure functions of an expression, a zone and an instant.

A schedule's slots are the instants its cron expression names in the zone's wall time,
converted to UTC. Daylight saving time is handled like this:

- a wall time that the spring-forward gap skips fires at the first instant after the gap
  (``30 2 * * *`` in America/New_York fires at 03:00 EDT on the transition day);
- a wall time that the fall-back overlap repeats fires once, at its first occurrence
  (``30 1 * * *`` fires at 01:30 EDT, not again at 01:30 EST), so the repeated hour's
  second pass holds no slots;
- wall times that map to the same instant (all of the gap, and the gap's end) fire once;
- slot instants strictly increase.

Time is always passed in; nothing here reads a clock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from taskqueue.core.payloads import short_repr

# Shorthands croniter understands and that mean the same as in cron(8). "@reboot" has no
# meaning for a queue, so it is not here.
ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
FIELDS_HINT = (
    "use 5 fields (minute hour day-of-month month day-of-week), a 6th for seconds "
    "(croniter's order: seconds come last), or one of " + ", ".join(sorted(ALIASES))
)
# Slots iterated without finding one past the wanted instant before giving up. A per-second
# schedule crosses the fall-back overlap in 3,600 steps; this leaves ample room.
MAX_SKIPPED_SLOTS = 200_000
_ONE_MICROSECOND = timedelta(microseconds=1)
_ONE_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """An invalid cron expression or time zone; the message says why."""


def validate_cron(expression: object) -> str:
    """Return ``expression`` normalised (single spaces); raise ``CronError`` saying why not."""
    if not isinstance(expression, str):
        raise CronError(
            f"invalid cron expression {short_repr(expression)}: it must be a string, "
            f"not {type(expression).__name__}"
        )
    return _validate_cron_string(expression)


@functools.lru_cache(maxsize=512)
def _validate_cron_string(expression: str) -> str:
    fields = expression.split()
    normalised = " ".join(fields)
    if not fields:
        raise CronError(f"invalid cron expression {expression!r}: it is empty; {FIELDS_HINT}")
    if normalised.startswith("@"):
        if len(fields) != 1 or normalised.lower() not in ALIASES:
            raise CronError(f"invalid cron expression {expression!r}: {FIELDS_HINT}")
        return normalised.lower()
    if len(fields) not in (5, 6):
        raise CronError(
            f"invalid cron expression {expression!r}: it has {len(fields)} fields; {FIELDS_HINT}"
        )
    try:
        iterator = croniter(normalised, datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise CronError(f"invalid cron expression {expression!r}: {exc}") from None
    try:
        # Well-formed but impossible ("0 0 30 2 *") would never fire: say so now.
        iterator.get_next(datetime)
    except (CroniterError, ValueError) as exc:
        raise CronError(f"cron expression {expression!r} never matches a date ({exc})") from None
    return normalised


def get_zone(name: object) -> ZoneInfo:
    """Return the ``ZoneInfo`` called ``name``; raise ``CronError`` for an unknown zone."""
    if not isinstance(name, str) or not name:
        raise CronError(f"time zone must be an IANA name such as 'Europe/Paris', got {name!r}")
    return _zone(name)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC', 'Europe/London' "
            "or 'America/New_York'"
        ) from None


class CronSlots:
    """The slots of one cron expression in one time zone."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = validate_cron(expression)
        self.zone = get_zone(timezone)

    def __repr__(self) -> str:
        return f"CronSlots({self.expression!r}, {self.zone.key!r})"

    def next_after(self, instant: datetime) -> datetime:
        """Return the first slot strictly after ``instant`` (an aware datetime), in UTC."""
        return next(self.after(instant))

    def after(self, instant: datetime) -> Iterator[datetime]:
        """Yield the slots strictly after ``instant``, in increasing order, in UTC."""
        _require_aware(instant)
        # Seconds are the cron's finest unit: start from the whole second, filter after.
        wall = _wall(instant.astimezone(self.zone)).replace(microsecond=0)
        walls = croniter(self.expression, wall)
        last = instant
        skipped = 0
        while True:
            slot = self.instant_of(walls.get_next(datetime))
            if slot > last:
                skipped = 0
                last = slot
                yield slot
            else:
                # Wall times whose instant is not later: the fall-back overlap when
                # ``instant`` is in its second pass, or the rest of a spring-forward gap.
                skipped = _count_skip(skipped, self)

    def at_or_before(self, instant: datetime) -> Iterator[datetime]:
        """Yield the slots at or before ``instant``, in decreasing order, in UTC."""
        _require_aware(instant)
        local = instant.astimezone(self.zone)
        wall = _wall(local)
        if local.fold:
            # In the overlap's second pass, every wall time up to the overlap's end fired at
            # its first occurrence, which is before ``instant``: start past the overlap.
            first_pass = local.replace(fold=0).utcoffset()
            second_pass = local.utcoffset()
            assert first_pass is not None and second_pass is not None
            wall += first_pass - second_pass
        walls = croniter(self.expression, wall.replace(microsecond=0) + _ONE_SECOND)
        last: datetime | None = None
        skipped = 0
        while True:
            slot = self.instant_of(walls.get_prev(datetime))
            if slot <= instant and (last is None or slot < last):
                skipped = 0
                last = slot
                yield slot
            else:
                skipped = _count_skip(skipped, self)

    def latest_at_or_before(self, instant: datetime) -> datetime:
        """Return the last slot at or before ``instant``."""
        return next(self.at_or_before(instant))

    def instant_of(self, wall: datetime) -> datetime:
        """Return the UTC instant at which naive local ``wall`` time fires."""
        # fold=0: an ambiguous wall time means its first occurrence.
        instant = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if _wall(instant.astimezone(self.zone)) == wall:
            return instant
        return self._gap_end(wall)

    def _gap_end(self, wall: datetime) -> datetime:
        """Return the first instant after the spring-forward gap that swallows ``wall``."""
        # fold=1 reads the gap with the offset after the transition (an instant before the
        # gap), fold=0 with the offset before it (an instant after): the transition lies
        # between. Bisect to the microsecond; the answer is exact for whole-second changes.
        low, high = sorted(
            wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC) for fold in (0, 1)
        )
        after = high.astimezone(self.zone).utcoffset()
        while high - low > _ONE_MICROSECOND:
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == after:
                high = middle
            else:
                low = middle
        return high


def next_slot(expression: str, timezone: str, after: datetime) -> datetime:
    """Return the first slot of ``expression`` in ``timezone`` strictly after ``after``."""
    return CronSlots(expression, timezone).next_after(after)


def _wall(local: datetime) -> datetime:
    return local.replace(tzinfo=None, fold=0)


def _require_aware(instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {instant.isoformat()}")


def _count_skip(skipped: int, slots: CronSlots) -> int:
    skipped += 1
    if skipped > MAX_SKIPPED_SLOTS:
        raise CronError(f"{slots!r} found no further slot in {MAX_SKIPPED_SLOTS} steps")
    return skipped
