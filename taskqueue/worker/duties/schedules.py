"""What a worker does for schedules: sync declarations at start, then two side duties.

Firing runs every ``FIRE_INTERVAL`` seconds on every worker, so a per-second schedule never
misses a slot; the query reads the ``taskqueue_schedule_due_idx`` index and finds nothing
most turns. Lateness is checked every ``LATE_CHECK_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import DatabaseError, connections
from django.db.utils import InterfaceError, OperationalError

from taskqueue.conf import settings as tq_settings
from taskqueue.schedules.lateness import report_late_schedules
from taskqueue.schedules.sync import sync_schedules
from taskqueue.store.firing import fire_due_schedules
from taskqueue.worker.duties.runner import Duty

logger = logging.getLogger("taskqueue.schedules")

FIRE_INTERVAL = 0.25
LATE_CHECK_INTERVAL = 5.0
# While the database is away, a duty this frequent reports it at most this often.
OUTAGE_REPORT_INTERVAL = 30.0


def sync_at_start() -> None:
    """Sync declared schedules; a failure is logged, and the worker starts anyway."""
    try:
        result = sync_schedules()
    except DatabaseError:
        logger.warning("could not sync schedules at start", exc_info=True)
        return
    changed = result.created + result.updated + result.deleted
    if changed:
        logger.info(
            "schedules synced: %d created, %d updated, %d deleted",
            len(result.created),
            len(result.updated),
            len(result.deleted),
        )


def schedule_duties(wake: Callable[[], None]) -> list[Duty]:
    """The worker duties that fire due slots and report late schedules."""

    def fire() -> None:
        if fire_due_schedules():
            wake()  # claim the new tasks now rather than at the next poll

    return [
        Duty("schedules", FIRE_INTERVAL, _QuietOutage(fire)),
        Duty("late schedules", LATE_CHECK_INTERVAL, report_late_schedules),
    ]


class _QuietOutage:
    """Report a database outage at most every ``OUTAGE_REPORT_INTERVAL`` s, not 4 times a second."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.run = run
        self.reported_at = -OUTAGE_REPORT_INTERVAL

    def __call__(self) -> None:
        try:
            self.run()
        except (OperationalError, InterfaceError):
            now = time.monotonic()
            if now - self.reported_at >= OUTAGE_REPORT_INTERVAL:
                self.reported_at = now
                raise  # the duty thread logs it once and drops the connection
            connections[tq_settings.DATABASE].close()
