"""What a worker writes about the tasks it holds, besides their outcomes: claim, release,
progress, and the cancel requests it reads. Every write is fenced by the claim's lease;
the outcomes are written by ``taskqueue.store.outcome_writes``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from taskqueue.models import Task, TaskStatus
from taskqueue.store import sql
from taskqueue.store.common import database_alias
from taskqueue.store.outcome_writes import cancel_claimed, claimed_rows
from taskqueue.store.sql import ClaimedTask
from taskqueue.store.transitions import Transition, announce

logger = logging.getLogger("taskqueue.store")


def claim_due_tasks(worker_id: str, queues: list[str], limit: int) -> list[ClaimedTask]:
    """Claim up to ``limit`` due tasks of ``queues`` for ``worker_id``."""
    return sql.claim_due(database_alias(), worker_id, queues, limit)


def cancel_requested_among(task_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these running tasks someone asked to cancel."""
    requested: set[uuid.UUID] = set()
    ids = list(task_ids)
    # Chunked: a worker may hold hundreds of tasks, and SQLite caps query parameters.
    for start in range(0, len(ids), 500):
        requested.update(
            Task.objects.using(database_alias())
            .filter(
                id__in=ids[start : start + 500], status=TaskStatus.RUNNING, cancel_requested=True
            )
            .values_list("id", flat=True)
        )
    return requested


CANCELLED_AT_SHUTDOWN = "cancelled while running: its worker shut down before it finished"


def release_tasks(tasks: Sequence[ClaimedTask]) -> int:
    """Give claimed tasks back to the queue with their attempt returned (shutdown).

    A task someone asked to cancel is cancelled instead: handed back, its next claim would
    clear the request and run it again.
    """
    using = database_alias()
    released = 0
    cancelled: list[ClaimedTask] = []
    with transaction.atomic(using=using):
        for task in tasks:
            if claimed_rows(task, using).filter(cancel_requested=True).exists():
                if cancel_claimed(task, reason=CANCELLED_AT_SHUTDOWN):
                    cancelled.append(task)
                continue
            released += claimed_rows(task, using).update(
                status=TaskStatus.PENDING,
                attempts=F("attempts") - 1,
                claimed_by=None,
                lease_id=None,
                started_at=None,
                updated_at=Now(),
            )
        if released:
            sql.notify(using, {task.queue for task in tasks})
    for task in cancelled:
        announce(Transition(task, TaskStatus.CANCELLED, error=CANCELLED_AT_SHUTDOWN))
    return released


def save_progress(task_id: uuid.UUID, lease_id: uuid.UUID, fraction: float, message: str) -> bool:
    """Store a running task's progress, only while ``lease_id`` still holds the claim."""
    return bool(
        Task.objects.using(database_alias())
        .filter(id=task_id, lease_id=lease_id, status=TaskStatus.RUNNING)
        .update(progress=fraction, progress_message=message)
    )


def is_cancel_requested(task_id: uuid.UUID) -> bool:
    """Whether someone asked a running task to stop (or it is no longer running)."""
    status, requested = Task.objects.using(database_alias()).filter(id=task_id).values_list(
        "status", "cancel_requested"
    ).first() or (TaskStatus.CANCELLED, True)
    return bool(requested) or status == TaskStatus.CANCELLED
