"""Record what became of finished tasks, and announce it (signals and log lines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from taskqueue import signals, store
from taskqueue.context import TaskContext
from taskqueue.events import Severity
from taskqueue.models import AttemptOutcome
from taskqueue.sql import ClaimedTask
from taskqueue.worker.executor import COMMITTED, LOST, RETRY, SUCCEEDED, Outcome

logger = logging.getLogger("taskqueue.worker")


@dataclass(frozen=True, slots=True)
class Finished:
    task: ClaimedTask
    outcome: Outcome
    context: TaskContext | None


def record(
    pending: list[Finished], written: list[Finished], dropped: list[Finished], worker_id: str
) -> None:
    """Write outcomes: every success in one statement, failures one by one (they are rarer).

    Each outcome leaves ``pending`` once its write has committed: into ``written``, or into
    ``dropped`` when the lease no longer held (someone else owns the task now). When the
    database fails midway the caller knows exactly which ones must be written again.
    """
    for item in [item for item in pending if item.outcome.kind in (COMMITTED, LOST)]:
        # An atomic handler recorded its own completion; a lost claim has nothing to record.
        if item.outcome.kind == COMMITTED:
            written.append(item)
        else:
            dropped.append(item)
            logger.warning(
                "dropped the outcome of task %s: %s",
                item.task.id,
                item.outcome.error,
                extra={"task_id": str(item.task.id), "task_type": item.task.task_type},
            )
        pending.remove(item)
    successes = [item for item in pending if item.outcome.kind == SUCCEEDED]
    if successes:
        done = store.complete_tasks([(item.task, item.outcome.result) for item in successes])
        for item in successes:
            (written if item.task.id in done else dropped).append(item)
        pending[:] = [item for item in pending if item.outcome.kind != SUCCEEDED]
    while pending:
        item = pending[0]
        task, outcome = item.task, item.outcome
        failure = {
            "worker_id": worker_id,
            "error_type": outcome.error_type,
            "error": outcome.error,
            "traceback": outcome.traceback,
            "outcome": outcome.attempt_outcome,
        }
        if outcome.kind == RETRY:
            stored = store.retry_later(task, delay=outcome.delay, **failure)
        else:
            stored = store.dead_letter(task, **failure) is not None
        (written if stored else dropped).append(pending.pop(0))


def announce(item: Finished, worker_id: str) -> None:
    """Send the lifecycle signals of one finished task and log failures with context."""
    task, outcome = item.task, item.outcome
    common = {"worker_id": worker_id, "duration": outcome.duration}
    if outcome.kind in (SUCCEEDED, COMMITTED):
        store.emit_for(task, signals.task_succeeded, name="succeeded", **common)
        return
    failure = {
        **common,
        "error_type": outcome.error_type,
        "message": outcome.error,
        "traceback": outcome.traceback,
    }
    log_extra = {
        "task_id": str(task.id),
        "task_type": task.task_type,
        "attempt": task.attempts,
        "duration_ms": round(outcome.duration * 1000),
    }
    store.emit_for(task, signals.task_failed, name="failed", severity=Severity.WARNING, **failure)
    if outcome.attempt_outcome == AttemptOutcome.TIMED_OUT:
        store.emit_for(
            task, signals.task_timed_out, name="timed_out", severity=Severity.WARNING, **failure
        )
    if outcome.kind == RETRY:
        logger.info(
            "task %s (%s) attempt %d failed: %s; retrying in %.1f s",
            task.id,
            task.task_type,
            task.attempts,
            outcome.error,
            outcome.delay,
            extra=log_extra,
        )
        store.emit_for(
            task,
            signals.task_retry_scheduled,
            name="retry_scheduled",
            severity=Severity.WARNING,
            **failure,
        )
    else:
        logger.error(
            "task %s (%s) dead-lettered after attempt %d: %s",
            task.id,
            task.task_type,
            task.attempts,
            outcome.error,
            extra=log_extra,
        )
        store.emit_for(
            task,
            signals.task_dead_lettered,
            name="dead_lettered",
            severity=Severity.ERROR,
            **failure,
        )
