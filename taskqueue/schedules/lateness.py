"""The dead-man's switch: which schedules have not succeeded when they should have.

A schedule's next success is due by the first slot after its last success (or after it was
created or last changed, whichever is later) plus its grace (``Schedule.grace``, else
``TASKQUEUE["SCHEDULE_GRACE"]``). Past that it is late: listed by ``late_schedules()`` (for
the stats and health views), and reported once per late episode with a warning and the
``schedule_late`` signal. A success ends the episode. Paused schedules are never late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from taskqueue import signals, store
from taskqueue.conf import settings as tq_settings
from taskqueue.events import Severity, emit
from taskqueue.models import Schedule
from taskqueue.schedules.cron import CronError, CronSlots
from taskqueue.store import schedule_rows

logger = logging.getLogger("taskqueue.schedules")


@dataclass(frozen=True)
class LateSchedule:
    """One schedule whose next success is overdue."""

    id: int
    name: str
    task_type: str
    queue: str
    due_at: datetime
    late_by: float  # seconds past due_at
    last_success_at: datetime | None
    late_since: datetime | None  # when it was reported (None: not yet)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the stats and health views."""
        return {
            "name": self.name,
            "task_type": self.task_type,
            "due_at": self.due_at.isoformat(),
            "late_by": round(self.late_by, 3),
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
        }


def success_due_at(schedule: Schedule) -> datetime | None:
    """When ``schedule``'s next success is due at the latest (None: invalid cron or zone)."""
    references = [schedule.last_success_at, schedule.created_at, schedule.updated_at]
    # An unsaved row holds database-default placeholders, not times: nothing is due yet.
    moments = [moment for moment in references if isinstance(moment, datetime)]
    if not moments:
        return None
    reference = max(moments)
    try:
        slot = CronSlots(schedule.cron, schedule.timezone).next_after(reference)
    except CronError:
        return None
    grace = schedule.grace if schedule.grace is not None else tq_settings.SCHEDULE_GRACE
    return slot + timedelta(seconds=grace)


def late_schedules(now: datetime | None = None) -> list[LateSchedule]:
    """The enabled schedules whose next success is overdue at ``now`` (default: database clock)."""
    using = store.database_alias()
    if now is None:
        now = store.db_now(using)
    late: list[LateSchedule] = []
    for schedule in Schedule.objects.using(using).filter(enabled=True).order_by("name"):
        due_at = success_due_at(schedule)
        if due_at is not None and due_at < now:
            late.append(
                LateSchedule(
                    id=schedule.pk,
                    name=schedule.name,
                    task_type=schedule.task_type,
                    queue=schedule.queue,
                    due_at=due_at,
                    late_by=(now - due_at).total_seconds(),
                    last_success_at=schedule.last_success_at,
                    late_since=schedule.late_since,
                )
            )
    return late


def report_late_schedules(now: datetime | None = None) -> list[LateSchedule]:
    """Warn and send ``schedule_late`` once per late episode; return the newly reported.

    Safe on every worker at once: marking ``late_since`` is a compare-and-set from NULL,
    and only the worker whose update matched reports.
    """
    if now is None:
        now = store.db_now(store.database_alias())
    late = late_schedules(now)
    reported: list[LateSchedule] = []
    for item in late:
        if item.late_since is not None:
            continue
        if not schedule_rows.mark_late(item.id, now):
            continue
        message = (
            f"schedule {item.name!r} is late: its next success was due by "
            f"{item.due_at.isoformat()} ({item.late_by:.0f} s ago)"
        )
        # Logged by the taskqueue.lifecycle receiver, like every event.
        emit(
            signals.schedule_late,
            name="schedule_late",
            severity=Severity.WARNING,
            task_type=item.task_type,
            queue=item.queue,
            message=message,
            extra={"schedule": item.name, **item.as_dict()},
        )
        reported.append(item)
    # An episode also ends when the schedule stops being late without a success (paused,
    # or its cron or grace changed), so a later lapse is reported again.
    schedule_rows.end_late_episodes(item.id for item in late)
    return reported
