"""Every change of a task's state, in one place.

Enqueue, claim, complete, retry later, dead-letter, release, cancel, requeue, delete and
prune. The worker, the admin, the API and the commands call these; nothing else writes task
state.
Every write about a claimed task is fenced by its lease: when no row matches, someone else
owns the task now, and the write is dropped and logged.
"""

from taskqueue.store.common import database_alias
from taskqueue.store.enqueueing import build_task, enqueue, enqueue_many
from taskqueue.store.outcome_writes import (
    cancel_claimed,
    complete_one,
    complete_tasks,
    dead_letter,
    fail_attempt,
    retry_later,
)
from taskqueue.store.rescue import RescueResult, rescue_own_tasks, rescue_stale_tasks
from taskqueue.store.retention import (
    PRUNE_KINDS,
    Cutoffs,
    count_prunable,
    delete_prunable_batch,
)
from taskqueue.store.running import (
    cancel_requested_among,
    claim_due_tasks,
    is_cancel_requested,
    release_tasks,
    save_progress,
)
from taskqueue.store.sql import ClaimedTask, db_now, vendor
from taskqueue.store.task_type_rows import (
    ensure_task_types,
    pause_task_types,
    reset_circuits,
    resume_task_types,
)
from taskqueue.store.transitions import Transition, announce, emit_for
from taskqueue.store.triage import (
    RequeueResult,
    cancel,
    cancel_tasks,
    delete_tasks,
    edit_dead_letter_note,
    mark_reviewed,
    requeue_dead,
)
from taskqueue.store.waiting_sweep import SweepResult, sweep_waiting_tasks

__all__ = [
    "PRUNE_KINDS",
    "ClaimedTask",
    "Cutoffs",
    "RequeueResult",
    "RescueResult",
    "SweepResult",
    "Transition",
    "announce",
    "build_task",
    "cancel",
    "cancel_claimed",
    "cancel_requested_among",
    "cancel_tasks",
    "claim_due_tasks",
    "complete_one",
    "complete_tasks",
    "count_prunable",
    "database_alias",
    "db_now",
    "dead_letter",
    "delete_prunable_batch",
    "delete_tasks",
    "edit_dead_letter_note",
    "emit_for",
    "enqueue",
    "enqueue_many",
    "ensure_task_types",
    "fail_attempt",
    "is_cancel_requested",
    "mark_reviewed",
    "pause_task_types",
    "release_tasks",
    "requeue_dead",
    "rescue_own_tasks",
    "rescue_stale_tasks",
    "reset_circuits",
    "resume_task_types",
    "retry_later",
    "save_progress",
    "sweep_waiting_tasks",
    "vendor",
]
