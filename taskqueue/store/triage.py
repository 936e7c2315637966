"""What people do to tasks from the admin, the API and the commands: cancel, retry dead
tasks, delete, mark dead letters reviewed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.events import emit
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import (
    READY_STATES,
    DeadLetter,
    Task,
    TaskStatus,
)
from taskqueue.store import dependencies, sql
from taskqueue.store.common import database_alias, user_or_none

logger = logging.getLogger("taskqueue.store")


def _task_id(task_or_id: Task | uuid.UUID | str) -> uuid.UUID:
    if isinstance(task_or_id, Task):
        return task_or_id.id
    if isinstance(task_or_id, uuid.UUID):
        return task_or_id
    try:
        return uuid.UUID(str(task_or_id))
    except ValueError:
        raise InvalidTaskOption(f"{task_or_id!r} is not a task id") from None


CANCELLABLE_STATES = (*READY_STATES, TaskStatus.WAITING)


# A task can move from running back to waiting (a failed attempt) between cancel's two
# statements; cancel then tries again. Each round needs an attempt to end, so few suffice.
CANCEL_ROUNDS = 5


def cancel(task_or_id: Task | uuid.UUID | str, *, reason: str = "cancelled") -> bool:
    """Cancel a task that has not started; ask a running one to stop.

    Returns True when the task is now cancelled. Returns False when it had already finished,
    does not exist, or is running: then ``cancel_requested`` is set, the handler sees
    ``ctx.cancel_requested``, and the worker stops it after ``CANCEL_GRACE`` seconds (the
    task ends ``cancelled``), unless the handler returns first (it ends ``completed``).
    """
    using = database_alias()
    task_id = _task_id(task_or_id)
    for _ in range(CANCEL_ROUNDS):
        cancelled = (
            Task.objects.using(using)
            .filter(id=task_id, status__in=CANCELLABLE_STATES)
            .update(
                status=TaskStatus.CANCELLED,
                last_error=reason,
                completed_at=Now(),
                updated_at=Now(),
            )
        )
        if cancelled:
            dependencies.cascade_cancellation(using, task_id, reason)
            _announce_cancelled(using, task_id, reason)
            return True
        # Only a running task gets the flag: a completion (which matches running) is never
        # undone, and a worker recording a failure reads the flag under lock.
        if (
            Task.objects.using(using)
            .filter(id=task_id, status=TaskStatus.RUNNING)
            .update(cancel_requested=True, updated_at=Now())
        ):
            return False
        unfinished = Task.objects.using(using).filter(id=task_id, status__in=CANCELLABLE_STATES)
        if not unfinished.exists():
            return False  # finished, or no such task
    return False


def _announce_cancelled(using: str, task_id: uuid.UUID, reason: str) -> None:
    # Read back for the event's context; sent on commit, so a cancel rolled back with the
    # caller's transaction is never announced.
    row = (
        Task.objects.using(using)
        .filter(id=task_id)
        .values_list("task_type", "queue", "attempts", "max_attempts")
        .first()
    )
    task_type, queue, attempts, max_attempts = row or ("", "", None, None)
    transaction.on_commit(
        lambda: emit(
            signals.task_cancelled,
            name="cancelled",
            task_id=task_id,
            task_type=task_type,
            queue=queue,
            attempt=attempts,
            max_attempts=max_attempts,
            message=reason,
        ),
        using=using,
    )


def cancel_tasks(task_ids: Iterable[uuid.UUID]) -> int:
    """Cancel every given task that has not started yet; return how many were cancelled."""
    return sum(cancel(task_id) for task_id in task_ids)


@dataclass(frozen=True)
class RequeueResult:
    requeued: int
    skipped: list[uuid.UUID]  # a newer unfinished task holds the same idempotency key


def requeue_dead(task_ids: Iterable[uuid.UUID]) -> RequeueResult:
    """Put failed (dead) tasks back to ``pending`` with a fresh attempt budget."""
    using = database_alias()
    requeued = 0
    skipped: list[uuid.UUID] = []
    queues: set[str] = set()
    with transaction.atomic(using=using):
        for task_id in task_ids:
            try:
                with transaction.atomic(using=using):
                    rows = (
                        Task.objects.using(using)
                        .filter(id=task_id, status=TaskStatus.FAILED)
                        .update(
                            status=TaskStatus.PENDING,
                            attempts=0,
                            run_at=Now(),
                            claimed_by=None,
                            lease_id=None,
                            started_at=None,
                            completed_at=None,
                            cancel_requested=False,
                            updated_at=Now(),
                        )
                    )
            except IntegrityError:
                skipped.append(task_id)
                continue
            if rows:
                requeued += 1
                DeadLetter.objects.using(using).filter(
                    task_id=task_id, resolved_at__isnull=True
                ).update(resolved_at=Now())
                queues.update(
                    Task.objects.using(using).filter(id=task_id).values_list("queue", flat=True)
                )
        sql.notify(using, queues)
    if skipped:
        logger.warning(
            "did not retry %d dead task(s): an unfinished task holds the same idempotency key",
            len(skipped),
            extra={"task_ids": [str(task_id) for task_id in skipped]},
        )
    return RequeueResult(requeued=requeued, skipped=skipped)


def delete_tasks(task_ids: Iterable[uuid.UUID]) -> int:
    """Delete tasks with their attempts and dead letters; running tasks are kept."""
    using = database_alias()
    ids = list(task_ids)
    with transaction.atomic(using=using):
        doomed = Task.objects.using(using).filter(id__in=ids).exclude(status=TaskStatus.RUNNING)
        count = doomed.count()
        doomed.delete()
    return count


def mark_reviewed(dead_letter_ids: Iterable[int], user: Any, note: str = "") -> int:
    """Mark dead letters reviewed by ``user``; return how many changed."""
    fields: dict[str, Any] = {
        "reviewed": True,
        "reviewed_by": user_or_none(user),
        "reviewed_at": Now(),
    }
    if note:
        fields["note"] = note
    return (
        DeadLetter.objects.using(database_alias())
        .filter(id__in=list(dead_letter_ids), reviewed=False)
        .update(**fields)
    )


def edit_dead_letter_note(dead_letter_id: int, note: str) -> None:
    """Keep the note a person wrote on a dead letter (the admin's one editable field)."""
    DeadLetter.objects.using(database_alias()).filter(id=dead_letter_id).update(note=note)
