"""What a worker writes about the tasks it claimed: claim, complete, retry, dead-letter,
release, progress. Every write is fenced by the claim's lease.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.db.models.functions import Now

from taskqueue import sql
from taskqueue.events import emit
from taskqueue.models import (
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskStatus,
)
from taskqueue.sql import ClaimedTask
from taskqueue.store import flow, schedules, workflows
from taskqueue.store.common import database_alias

logger = logging.getLogger("taskqueue.store")


def claim_due_tasks(worker_id: str, queues: list[str], limit: int) -> list[ClaimedTask]:
    """Claim up to ``limit`` due tasks of ``queues`` for ``worker_id``."""
    return sql.claim_due(database_alias(), worker_id, queues, limit)


def complete_tasks(completions: list[tuple[ClaimedTask, Any]]) -> set[uuid.UUID]:
    """Record successful results in one statement; return the ids actually completed."""
    using = database_alias()
    with transaction.atomic(using=using):
        rows = sql.complete_batch(
            using, [(task.id, task.lease_id, result) for task, result in completions]
        )
        _after_completion(using, rows)
    done = {row.id for row in rows}
    for task, _ in completions:
        if task.id not in done:
            _log_lost_lease(task, "completion")
    return done


def complete_one(task: ClaimedTask, result: Any) -> bool:
    """Complete one task, fenced by its lease (atomic handlers call this in their transaction)."""
    using = database_alias()
    row = (
        _claimed(task, using)
        .select_for_update()
        .values_list("task_type", "has_dependents", "schedule_id")
        .first()
    )
    if row is None:
        return False
    _claimed(task, using).update(
        status=TaskStatus.COMPLETED, result=result, completed_at=Now(), updated_at=Now()
    )
    _after_completion(using, [sql.CompletedRow(task.id, *row)])
    return True


def _after_completion(using: str, rows: list[sql.CompletedRow]) -> None:
    """What a completion sets off, in the completion's transaction: dependents become
    ready, schedules record their success, circuit breakers count it."""
    if not rows:
        return
    upstream = [row.id for row in rows if row.has_dependents]
    if upstream:
        workflows.release_dependents(using, upstream)
    schedule_ids = sorted({row.schedule_id for row in rows if row.schedule_id is not None})
    if schedule_ids:
        schedules.record_successes(using, schedule_ids)
    flow.record_successes(using, sorted({row.task_type for row in rows}))


def _log_lost_lease(task: ClaimedTask, what: str) -> None:
    logger.warning(
        "dropped the %s of task %s: its claim was lost (rescued, cancelled or released)",
        what,
        task.id,
        extra={"task_id": str(task.id), "task_type": task.task_type, "attempt": task.attempts},
    )


def _claimed(task: ClaimedTask, using: str):  # type: ignore[no-untyped-def]
    """The task's row, only while this claim still owns it."""
    return Task.objects.using(using).filter(
        id=task.id, lease_id=task.lease_id, status=TaskStatus.RUNNING
    )


def _fail_claimed(
    task: ClaimedTask,
    using: str,
    *,
    what: str,
    worker_id: str,
    outcome: str,
    error_type: str,
    error: str,
    traceback: str,
    **fields: Any,
) -> bool:
    """Apply a failure to a task this claim still owns and log the attempt; False if lost.

    Call inside a transaction: the state change and the attempt row commit together.
    """
    updated = _claimed(task, using).update(
        last_error=error, claimed_by=None, updated_at=Now(), **fields
    )
    if not updated:
        _log_lost_lease(task, what)
        return False
    if outcome in (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT):
        flow.record_failure(using, task.task_type)
    TaskAttempt.objects.using(using).create(
        task_id=task.id,
        number=task.attempts,
        worker_id=worker_id,
        outcome=outcome,
        started_at=task.started_at,
        error_type=error_type,
        error=error,
        traceback=traceback,
    )
    return True


def retry_later(
    task: ClaimedTask,
    *,
    worker_id: str,
    delay: float,
    error_type: str,
    error: str,
    traceback: str = "",
    outcome: str = AttemptOutcome.FAILED,
) -> bool:
    """Put a failed task back to wait ``delay`` seconds; False if the claim was lost."""
    using = database_alias()
    run_at = (
        Now()
        if delay <= 0
        else ExpressionWrapper(Now() + timedelta(seconds=delay), output_field=DateTimeField())
    )
    with transaction.atomic(using=using):
        return _fail_claimed(
            task,
            using,
            what="retry",
            worker_id=worker_id,
            outcome=outcome,
            error_type=error_type,
            error=error,
            traceback=traceback,
            status=TaskStatus.RETRYING,
            run_at=run_at,
        )


def dead_letter(
    task: ClaimedTask,
    *,
    worker_id: str,
    error_type: str,
    error: str,
    traceback: str = "",
    outcome: str = AttemptOutcome.FAILED,
) -> DeadLetter | None:
    """Fail a task for good and file its dead letter; None if the claim was lost."""
    using = database_alias()
    with transaction.atomic(using=using):
        if not _fail_claimed(
            task,
            using,
            what="dead letter",
            worker_id=worker_id,
            outcome=outcome,
            error_type=error_type,
            error=error,
            traceback=traceback,
            status=TaskStatus.FAILED,
            completed_at=Now(),
        ):
            return None
        history = [
            attempt.as_history_entry()
            for attempt in TaskAttempt.objects.using(using).filter(task_id=task.id)
        ]
        return DeadLetter.objects.using(using).create(
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            error_type=error_type,
            error=error,
            traceback=traceback,
            attempts=task.attempts,
            attempts_history=history,
        )


def release_tasks(tasks: Sequence[ClaimedTask]) -> int:
    """Give claimed tasks back to the queue with their attempt returned (shutdown)."""
    using = database_alias()
    released = 0
    with transaction.atomic(using=using):
        for task in tasks:
            released += _claimed(task, using).update(
                status=TaskStatus.PENDING,
                attempts=F("attempts") - 1,
                claimed_by=None,
                lease_id=None,
                started_at=None,
                updated_at=Now(),
            )
        if released:
            sql.notify(using, {task.queue for task in tasks})
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


def emit_for(task: ClaimedTask, signal: Any, name: str, **fields: Any) -> None:
    """Send a lifecycle signal about a claimed task."""
    emit(
        signal,
        name=name,
        task_id=task.id,
        task_type=task.task_type,
        queue=task.queue,
        attempt=task.attempts,
        max_attempts=task.max_attempts,
        **fields,
    )
