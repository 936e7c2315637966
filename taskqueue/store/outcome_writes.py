"""The lease-fenced writes that end a claimed task's attempt: complete, retry, dead-letter,
cancel.

``taskqueue.store.settling`` turns a worker's outcome into one of these and returns the
``Transition``; rescue and shutdown release call them too. When no row matches the lease,
someone else owns the task now: the write is dropped, logged, and reported as not made.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now

from taskqueue.core.retry import bounded_delay
from taskqueue.models import (
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskStatus,
)
from taskqueue.store import dependencies, firing, flow, sql
from taskqueue.store.common import database_alias
from taskqueue.store.sql import ClaimedTask

logger = logging.getLogger("taskqueue.store")


def complete_tasks(completions: list[tuple[ClaimedTask, Any]]) -> set[uuid.UUID]:
    """Record successful results in one statement; return the ids actually completed."""
    using = database_alias()
    # One statement, committed on its own: the common batch needs no transaction around it.
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
        claimed_rows(task, using)
        .select_for_update()
        .values_list("task_type", "has_dependents", "schedule_id")
        .first()
    )
    if row is None:
        return False
    claimed_rows(task, using).update(
        status=TaskStatus.COMPLETED, result=result, completed_at=Now(), updated_at=Now()
    )
    _after_completion(using, [sql.CompletedRow(task.id, *row)])
    return True


def complete_claimed(task: ClaimedTask, result: Any) -> bool:
    """Complete one task in a transaction of its own (when a batch of completions failed)."""
    with transaction.atomic(using=database_alias()):
        return complete_one(task, result)


def _after_completion(using: str, rows: list[sql.CompletedRow]) -> None:
    """What completions set off: dependents become ready, schedules record their success,
    circuit breakers reset.

    Runs after the completion itself: a dependent released here sees every upstream that
    completed before (each completion runs this after its own), and if the worker dies in
    between, the workers' sweep of waiting tasks releases it.
    """
    if not rows:
        return
    upstream = [row.id for row in rows if row.has_dependents]
    schedule_ids = sorted({row.schedule_id for row in rows if row.schedule_id is not None})
    if upstream or schedule_ids:
        with transaction.atomic(using=using):
            if upstream:
                dependencies.release_dependents(using, upstream)
            if schedule_ids:
                firing.record_successes(using, schedule_ids)
    flow.record_successes(using, sorted({row.task_type for row in rows}))


def _log_lost_lease(task: ClaimedTask, what: str) -> None:
    logger.warning(
        "dropped the %s of task %s: its claim was lost (rescued, cancelled or released)",
        what,
        task.id,
        extra={"task_id": str(task.id), "task_type": task.task_type, "attempt": task.attempts},
    )


def claimed_rows(task: ClaimedTask, using: str):  # type: ignore[no-untyped-def]
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
    updated = claimed_rows(task, using).update(
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
    delay = bounded_delay(delay)  # callers bound it already; a run_at past it is unreadable
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
        letter = DeadLetter.objects.using(using).create(
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            error_type=error_type,
            error=error,
            traceback=traceback,
            attempts=task.attempts,
            attempts_history=history,
        )
        # Its waiting dependents can never run now: cancel them, naming this task.
        dependencies.cascade_failure(using, task.id, task.task_type, error)
        return letter


# --- cancellation of claimed tasks ---------------------------------------------------------


def fail_attempt(
    task: ClaimedTask,
    *,
    worker_id: str,
    dead: bool,
    delay: float = 0.0,
    error_type: str,
    error: str,
    traceback: str = "",
    outcome: str = AttemptOutcome.FAILED,
    cancel_reason: str = "",
) -> str | None:
    """Record a failed attempt: dead-letter it (``dead``) or retry it after ``delay``, but
    cancel it instead when a cancel was requested while it ran.

    Returns the status written (``failed``, ``retrying`` or ``cancelled``), or None when the
    claim was lost.
    """
    using = database_alias()
    with transaction.atomic(using=using):
        # Locked, so a cancel request cannot slip in between this read and the write: it
        # waits, then finds the task no longer running and cancels it where it now waits.
        requested = (
            claimed_rows(task, using)
            .select_for_update()
            .values_list("cancel_requested", flat=True)
            .first()
        )
        if requested is None:
            _log_lost_lease(task, "failure")
            return None
        if requested:
            reason = cancel_reason or f"cancelled while running; it ended with {error_type}"
            cancel_claimed(task, reason=reason)
            return TaskStatus.CANCELLED
        failure = {
            "worker_id": worker_id,
            "error_type": error_type,
            "error": error,
            "traceback": traceback,
            "outcome": outcome,
        }
        if dead:
            return TaskStatus.FAILED if dead_letter(task, **failure) is not None else None
        return TaskStatus.RETRYING if retry_later(task, delay=delay, **failure) else None


def cancel_claimed(task: ClaimedTask, *, reason: str) -> bool:
    """Record that a claimed task ended cancelled (stopped, or withdrawn before it started);
    False if the claim was lost.

    Fenced like a completion: only the running claim's own lease matches, so a cancel never
    overwrites a completion, and a completion arriving later finds nothing to complete.
    """
    using = database_alias()
    with transaction.atomic(using=using):
        has_dependents = (
            claimed_rows(task, using)
            .select_for_update()
            .values_list("has_dependents", flat=True)
            .first()
        )
        if has_dependents is None:
            _log_lost_lease(task, "cancellation")
            return False
        claimed_rows(task, using).update(
            status=TaskStatus.CANCELLED,
            last_error=reason,
            completed_at=Now(),
            claimed_by=None,
            updated_at=Now(),
        )
        if has_dependents:
            dependents_reason = dependencies.cancelled_reason(task.id, task.task_type, reason)
            dependencies.cancel_dependents(using, [task.id], dependents_reason)
    return True
