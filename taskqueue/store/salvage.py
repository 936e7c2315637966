"""The last write about a claimed task whose outcome could not be stored any other way.

When even a dead letter naming the problem cannot be written (a constraint, a trigger, a
table in trouble...), the task is still taken out of ``running``: failed with a fixed
message, fenced by its lease like every write about a claimed task, and given a dead letter
with that message when the dead-letter table takes one. Its worker logged why.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction
from django.db.models.functions import Now

from taskqueue.models import DeadLetter, Task, TaskAttempt, TaskStatus
from taskqueue.store import dependencies
from taskqueue.store.common import database_alias
from taskqueue.store.sql import ClaimedTask

logger = logging.getLogger("taskqueue.store")

UNRECORDABLE_TYPE = "UnstorableOutcome"
UNRECORDABLE_ERROR = (
    "the outcome of this attempt could not be stored, nor a dead letter naming why; "
    "see the worker's log"
)


def fail_unrecordable(task: ClaimedTask) -> bool:
    """Fail a claimed task with a fixed message; False if the claim was lost."""
    using = database_alias()
    with transaction.atomic(using=using):
        updated = (
            Task.objects.using(using)
            .filter(id=task.id, lease_id=task.lease_id, status=TaskStatus.RUNNING)
            .update(
                status=TaskStatus.FAILED,
                last_error=UNRECORDABLE_ERROR,
                completed_at=Now(),
                claimed_by=None,
                updated_at=Now(),
            )
        )
        if not updated:
            logger.warning(
                "dropped the last-resort failure of task %s: its claim was lost",
                task.id,
                extra={"task_id": str(task.id), "task_type": task.task_type},
            )
            return False
        _file_fixed_dead_letter(task, using)
        # Its waiting dependents could never run: cancel them, as a dead letter would.
        dependencies.cascade_failure(using, task.id, task.task_type, UNRECORDABLE_ERROR)
    return True


def _file_fixed_dead_letter(task: ClaimedTask, using: str) -> None:
    # In a savepoint: if the dead-letter table refuses this row too, the task still fails.
    try:
        with transaction.atomic(using=using):
            DeadLetter.objects.using(using).create(
                task_id=task.id,
                task_type=task.task_type,
                queue=task.queue,
                error_type=UNRECORDABLE_TYPE,
                error=UNRECORDABLE_ERROR,
                attempts=task.attempts,
                attempts_history=[
                    attempt.as_history_entry()
                    for attempt in TaskAttempt.objects.using(using).filter(task_id=task.id)
                ],
            )
    except DatabaseError:
        logger.error(
            "could not file a dead letter for task %s: it is failed without one",
            task.id,
            exc_info=True,
            extra={"task_id": str(task.id), "task_type": task.task_type},
        )
