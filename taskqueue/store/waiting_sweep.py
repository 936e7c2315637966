"""The sweep of waiting tasks: the belt for anything a race left behind.

The completion and cancellation paths (``taskqueue.store.dependencies``) release or cancel
dependents in their own transactions; a worker duty runs ``sweep_waiting_tasks`` every
``RESCUE_INTERVAL`` to finish what a race between them left waiting.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.db import connections, transaction

from taskqueue.models import Task, TaskDependency, TaskStatus
from taskqueue.store import sql
from taskqueue.store.common import database_alias
from taskqueue.store.dependencies import (
    ALL_UPSTREAMS_COMPLETED,
    DEAD_STATES,
    Upstream,
    cancel_dependents,
    cancel_waiting,
    emit_cancelled,
    reason_for,
    release_waiting,
)

logger = logging.getLogger("taskqueue.store")

# Waiting tasks one sweep looks at, so a huge backlog never makes one endless transaction.
SWEEP_BATCH = 500

_TASK = Task._meta.db_table
_DEP = TaskDependency._meta.db_table
_WAITING = TaskStatus.WAITING.value


@dataclass(frozen=True, slots=True)
class SweepResult:
    released: list[uuid.UUID]
    cancelled: list[uuid.UUID]


def sweep_waiting_tasks(limit: int = SWEEP_BATCH) -> SweepResult:
    """Release waiting tasks whose upstreams all completed; cancel those with a dead one.

    A worker duty runs this every ``RESCUE_INTERVAL``: the completion and cancellation paths
    already do both in their own transactions, so this only finds what a race left behind.
    """
    using = database_alias()
    with transaction.atomic(using=using):
        released = release_waiting(using, _releasable(using, limit))
    cancelled: list[uuid.UUID] = []
    for task_id, upstream in _doomed(using, limit):
        with transaction.atomic(using=using):
            reason = reason_for(upstream)
            rows = cancel_waiting(using, [task_id], reason)
            if not rows:
                continue  # released or cancelled meanwhile
            transaction.on_commit(lambda rows=rows: emit_cancelled(rows), using=using)
            cancelled += [task_id, *cancel_dependents(using, [task_id], reason)]
    if released or cancelled:
        logger.info(
            "workflow sweep released %d and cancelled %d waiting task(s)",
            len(released),
            len(cancelled),
        )
    return SweepResult(released=released, cancelled=cancelled)


def _releasable(using: str, limit: int) -> list[uuid.UUID]:
    query = (
        f"SELECT id FROM {_TASK} WHERE status = '{_WAITING}' AND {ALL_UPSTREAMS_COMPLETED} "
        "ORDER BY id LIMIT %s"
    )
    if sql.vendor(using) == "postgresql":
        # A completion holding one of these is releasing it right now: leave it be.
        query += " FOR UPDATE SKIP LOCKED"
    with connections[using].cursor() as cursor:
        cursor.execute(query, [limit])
        return [sql._as_uuid(row[0]) for row in cursor.fetchall()]


def _doomed(using: str, limit: int) -> list[tuple[uuid.UUID, Upstream]]:
    """Waiting tasks with a failed or cancelled upstream, each with the first such upstream."""
    dead = ", ".join(f"'{state.value}'" for state in DEAD_STATES)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT t.id, u.id, u.task_type, u.status, u.last_error FROM {_TASK} AS t "
            f"JOIN {_DEP} AS d ON d.task_id = t.id JOIN {_TASK} AS u ON u.id = d.depends_on_id "
            f"WHERE t.status = '{_WAITING}' AND u.status IN ({dead}) "
            "ORDER BY t.id, d.position LIMIT %s",
            [limit],
        )
        rows = cursor.fetchall()
    doomed: dict[uuid.UUID, Upstream] = {}
    for task_id, up_id, up_type, up_status, up_error in rows:
        doomed.setdefault(
            sql._as_uuid(task_id), Upstream(sql._as_uuid(up_id), up_type, up_status, up_error or "")
        )
    return list(doomed.items())
