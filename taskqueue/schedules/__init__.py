"""Recurring tasks: cron slots, declarations, sync to the ``Schedule`` table, lateness.

- ``cron``: slot maths in a time zone (daylight saving time included); pure.
- ``definitions``: one schedule's fields, validated (shared with the admin form).
- ``declarations``: ``@taskqueue.periodic``, built-in schedules, ``TASKQUEUE["SCHEDULES"]``.
- ``sync``: copies declarations into the table at worker start.
- ``lateness``: the dead-man's switch (``late_schedules()``), ``heartbeats``: its pings.
- ``taskqueue.store.firing`` fires due slots and records successes.

Importing this package is safe before the app registry is ready; the names that need the
database load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskqueue.schedules.cron import CronError, CronSlots, next_slot, validate_cron
from taskqueue.schedules.declarations import declare_builtin, periodic
from taskqueue.schedules.definitions import ScheduleDeclaration, ScheduleDefinitionError

if TYPE_CHECKING:
    from taskqueue.schedules.lateness import LateSchedule, late_schedules, report_late_schedules
    from taskqueue.schedules.sync import SyncResult, sync_schedules
    from taskqueue.store.firing import fire_due_schedules, run_now

_LAZY: dict[str, str] = {
    "LateSchedule": "taskqueue.schedules.lateness",
    "late_schedules": "taskqueue.schedules.lateness",
    "report_late_schedules": "taskqueue.schedules.lateness",
    "SyncResult": "taskqueue.schedules.sync",
    "sync_schedules": "taskqueue.schedules.sync",
    "fire_due_schedules": "taskqueue.store.firing",
    "run_now": "taskqueue.store.firing",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taskqueue.schedules' has no attribute {name!r}")


__all__ = [
    "CronError",
    "CronSlots",
    "LateSchedule",
    "ScheduleDeclaration",
    "ScheduleDefinitionError",
    "SyncResult",
    "declare_builtin",
    "fire_due_schedules",
    "late_schedules",
    "next_slot",
    "periodic",
    "report_late_schedules",
    "run_now",
    "sync_schedules",
    "validate_cron",
]
