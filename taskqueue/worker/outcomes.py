"""Record what became of finished tasks, and announce it (signals and log lines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from taskqueue import signals, store
from taskqueue.context import TaskContext
from taskqueue.events import Severity
from taskqueue.models import AttemptOutcome, TaskStatus
from taskqueue.sql import ClaimedTask
from taskqueue.worker.executor import CANCELLED, COMMITTED, LOST, RETRY, SUCCEEDED, Outcome

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
        if outcome.kind == CANCELLED:
            stored = store.cancel_claimed(task, reason=outcome.error)
            (written if stored else dropped).append(pending.pop(0))
            continue
        reason = cancelled_by_failure(outcome)
        status = store.fail_attempt(
            task,
            worker_id=worker_id,
            dead=outcome.kind != RETRY,
            delay=outcome.delay,
            error_type=outcome.error_type,
            error=outcome.error,
            traceback=outcome.traceback,
            outcome=outcome.attempt_outcome,
            cancel_reason=reason,
        )
        pending.pop(0)
        if status == TaskStatus.CANCELLED:
            # A cancel was requested while it ran: whatever it raised, it ends cancelled.
            item = Finished(task, replace(outcome, kind=CANCELLED, error=reason), item.context)
        (written if status is not None else dropped).append(item)


def cancelled_by_failure(outcome: Outcome) -> str:
    """The reason a failed attempt of a task with a cancel request is recorded as cancelled."""
    return (
        "cancelled while running: after the cancel request the handler ended with "
        f"{outcome.error_type}: {outcome.error}"
    )


def announce(item: Finished, worker_id: str) -> None:
    """Send the lifecycle signals of one finished task and log failures with context."""
    task, outcome = item.task, item.outcome
    common = {"worker_id": worker_id, "duration": outcome.duration}
    if outcome.kind in (SUCCEEDED, COMMITTED):
        store.emit_for(task, signals.task_succeeded, name="succeeded", **common)
        return
    # No log lines of its own here: the taskqueue.lifecycle receiver writes one record per
    # event, with this context as extra= fields (taskqueue.monitoring.logging).
    if outcome.kind == CANCELLED:
        store.emit_for(
            task,
            signals.task_cancelled,
            name="cancelled",
            message=outcome.error,
            error_type=outcome.error_type,
            traceback=outcome.traceback,
            **common,
        )
        return
    failure = {
        **common,
        "error_type": outcome.error_type,
        "message": outcome.error,
        "traceback": outcome.traceback,
    }
    store.emit_for(task, signals.task_failed, name="failed", severity=Severity.WARNING, **failure)
    if outcome.attempt_outcome == AttemptOutcome.TIMED_OUT:
        store.emit_for(
            task, signals.task_timed_out, name="timed_out", severity=Severity.WARNING, **failure
        )
    if outcome.kind == RETRY:
        store.emit_for(
            task,
            signals.task_retry_scheduled,
            name="retry_scheduled",
            severity=Severity.WARNING,
            **{**failure, "message": f"retrying in {outcome.delay:.1f} s: {outcome.error}"},
            extra={"delay": outcome.delay},
        )
    else:
        store.emit_for(
            task,
            signals.task_dead_lettered,
            name="dead_lettered",
            severity=Severity.ERROR,
            **failure,
        )
