"""Every write of a ``Schedule`` row outside firing: the sync of declared schedules, the
admin's add and change forms, and the marks of the dead-man's switch.

``taskqueue.schedules`` decides what to declare and when a schedule is late; this module
writes it. Firing (next run, last task, last success) is ``taskqueue.store.firing``'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from taskqueue.models import Schedule
from taskqueue.store.common import database_alias


def create_declared(row: Schedule) -> bool:
    """Insert a schedule declared in code or settings; False when its name is taken."""
    using = database_alias()
    try:
        with transaction.atomic(using=using):
            row.save(force_insert=True, using=using)
    except IntegrityError:
        return False  # a worker starting at the same moment created it first
    return True


def update_declared(schedule_id: int, changes: dict[str, Any]) -> None:
    """Follow a changed declaration: write the ``changes`` columns."""
    Schedule.objects.using(database_alias()).filter(pk=schedule_id).update(
        updated_at=Now(), **changes
    )


def delete_undeclared(schedule_ids: Iterable[int]) -> None:
    """Delete code and settings schedules that are no longer declared."""
    Schedule.objects.using(database_alias()).filter(pk__in=list(schedule_ids)).delete()


def save_from_admin(schedule: Schedule, changed_fields: list[str] | None) -> None:
    """Save the admin's add form (``changed_fields`` None) or its change form.

    A change writes only ``changed_fields``: the state columns may have moved on since the
    page was loaded (a firing), and must not be rolled back.
    """
    using = database_alias()
    if changed_fields is None:
        schedule.save(using=using, force_insert=True)
    else:
        schedule.save(using=using, update_fields=changed_fields)


def mark_late(schedule_id: int, now: datetime) -> bool:
    """Start a late episode; False when another worker marked it first (compare-and-set)."""
    return bool(
        Schedule.objects.using(database_alias())
        .filter(pk=schedule_id, late_since__isnull=True)
        .update(late_since=now)
    )


def end_late_episodes(still_late_ids: Iterable[int]) -> None:
    """End the late episodes of schedules no longer late, so a later lapse is reported."""
    ended = (
        Schedule.objects.using(database_alias())
        .filter(late_since__isnull=False)
        .exclude(pk__in=list(still_late_ids))
    )
    # Read first: on SQLite even an UPDATE that matches nothing takes the write lock.
    if ended.exists():
        ended.update(late_since=None)
