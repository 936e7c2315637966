"""Every change of a task's state, in one place.

Enqueue, claim, complete, retry later, dead-letter, release, cancel, requeue and delete. The
worker, the admin, the API and the commands call these; nothing else writes task state.
Every write about a claimed task is fenced by its lease: when no row matches, someone else
owns the task now, and the write is dropped and logged.
"""

from taskqueue.sql import ClaimedTask
from taskqueue.store.common import database_alias
from taskqueue.store.enqueueing import build_task, enqueue, enqueue_many
from taskqueue.store.rescue import RescueResult, rescue_own_tasks, rescue_stale_tasks
from taskqueue.store.running import (
    claim_due_tasks,
    complete_one,
    complete_tasks,
    dead_letter,
    emit_for,
    is_cancel_requested,
    release_tasks,
    retry_later,
    save_progress,
)
from taskqueue.store.triage import (
    RequeueResult,
    cancel,
    cancel_tasks,
    delete_tasks,
    mark_reviewed,
    requeue_dead,
)

__all__ = [
    "ClaimedTask",
    "RequeueResult",
    "RescueResult",
    "build_task",
    "cancel",
    "cancel_tasks",
    "claim_due_tasks",
    "complete_one",
    "complete_tasks",
    "database_alias",
    "dead_letter",
    "delete_tasks",
    "emit_for",
    "enqueue",
    "enqueue_many",
    "is_cancel_requested",
    "mark_reviewed",
    "release_tasks",
    "requeue_dead",
    "rescue_own_tasks",
    "rescue_stale_tasks",
    "retry_later",
    "save_progress",
]
