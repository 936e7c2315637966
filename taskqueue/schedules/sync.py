"""Copy the schedules declared in code and settings into the ``Schedule`` table.

Workers call ``sync_schedules()`` at start. Declared schedules are upserted by name: their
definition follows the declaration (a changed cron or time zone recomputes the next run),
while ``enabled`` is the admin's, so a pause sticks (a declaration with ``enabled=False``
does disable). Code and settings schedules no longer declared are deleted. Schedules made
in the admin are never touched; a declaration whose name an admin schedule already holds
is skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from taskqueue import store
from taskqueue.conf import settings as tq_settings
from taskqueue.models import Schedule, ScheduleSource
from taskqueue.schedules.cron import CronSlots
from taskqueue.schedules.declarations import declared_schedules
from taskqueue.schedules.definitions import ScheduleDeclaration
from taskqueue.store import schedule_rows

logger = logging.getLogger("taskqueue.schedules")

DECLARED_SOURCES = (ScheduleSource.CODE, ScheduleSource.SETTINGS)


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Declared, but the name belongs to an admin schedule.
    clashing: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def sync_schedules(now: datetime | None = None) -> SyncResult:
    """Upsert declared schedules, delete undeclared code/settings ones; return what changed."""
    using = store.database_alias()
    declared, problems = declared_schedules(tq_settings.SCHEDULES)
    result = SyncResult(problems=problems)
    for name, problem in problems:
        logger.error("schedule %s not synced: %s", repr(name) if name else "", problem)
    if now is None:
        now = store.db_now(using)
    existing = {row.name: row for row in Schedule.objects.using(using).all()}
    for declaration in declared:
        row = existing.get(declaration.name)
        if row is None:
            if _create(declaration, now):
                result.created.append(declaration.name)
        elif row.source == ScheduleSource.ADMIN:
            logger.warning(
                "schedule %r from %s is not synced: a schedule of that name was made in the "
                "admin, and the admin's stays",
                declaration.name,
                declaration.origin,
            )
            result.clashing.append(declaration.name)
        elif _update(row, declaration, now):
            result.updated.append(declaration.name)
    names = {declaration.name for declaration in declared}
    undeclared = [
        row for row in existing.values() if row.source in DECLARED_SOURCES and row.name not in names
    ]
    if undeclared:
        schedule_rows.delete_undeclared(row.pk for row in undeclared)
        result.deleted = sorted(row.name for row in undeclared)
        logger.info("deleted schedules no longer declared: %s", ", ".join(result.deleted))
    return result


def _create(declaration: ScheduleDeclaration, now: datetime) -> bool:
    row = Schedule(
        name=declaration.name,
        enabled=declaration.enabled,
        next_run_at=CronSlots(declaration.cron, declaration.timezone).next_after(now),
        **declaration.definition(),
    )
    return schedule_rows.create_declared(row)


def _update(row: Schedule, declaration: ScheduleDeclaration, now: datetime) -> bool:
    changes = {
        column: value
        for column, value in declaration.definition().items()
        if getattr(row, column) != value
    }
    if not declaration.enabled and row.enabled:
        changes["enabled"] = False
    if "cron" in changes or "timezone" in changes:
        changes["next_run_at"] = CronSlots(declaration.cron, declaration.timezone).next_after(now)
    if not changes:
        return False
    schedule_rows.update_declared(row.pk, changes)
    logger.info("schedule %r updated from %s: %s", row.name, declaration.origin, sorted(changes))
    return True
