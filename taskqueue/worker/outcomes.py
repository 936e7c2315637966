"""Record what became of finished tasks, and announce it (signals and log lines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from django.db.utils import DatabaseError, InterfaceError, OperationalError

from taskqueue import signals, store
from taskqueue.context import TaskContext
from taskqueue.events import Severity
from taskqueue.models import AttemptOutcome, TaskStatus
from taskqueue.store.running import complete_claimed
from taskqueue.store.salvage import UNRECORDABLE_ERROR, UNRECORDABLE_TYPE, fail_unrecordable
from taskqueue.store.sql import ClaimedTask
from taskqueue.worker.executor import (
    CANCELLED,
    COMMITTED,
    DEAD,
    LOST,
    MAX_ERROR_CHARS,
    RETRY,
    SUCCEEDED,
    Outcome,
    exception_message,
    recordable,
)

logger = logging.getLogger("taskqueue.worker")

# The database is away: the outcome waits in memory and is written when it is back.
CONNECTION_ERRORS = (OperationalError, InterfaceError)
# The database (or its driver) refused what was written: no retry will make it accept it.
# ValueError covers text the driver cannot encode and JSON it cannot dump, ArithmeticError
# a delay too large for a timedelta.
UNSTORABLE_ERRORS = (DatabaseError, ValueError, ArithmeticError)
UNSTORABLE_OUTCOME = UNRECORDABLE_TYPE


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

    A connection error is raised (the outcomes wait for the database). Any other error
    writing a batch of successes falls back to writing them one by one; an outcome that
    cannot be written alone is dead-lettered instead (``record_unstorable``).
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
        try:
            done = store.complete_tasks([(item.task, item.outcome.result) for item in successes])
        except CONNECTION_ERRORS:
            raise
        except UNSTORABLE_ERRORS:
            logger.warning(
                "could not complete a batch of %d task(s) in one statement: writing them one "
                "by one",
                len(successes),
                exc_info=True,
            )
        else:
            for item in successes:
                (written if item.task.id in done else dropped).append(item)
            pending[:] = [item for item in pending if item.outcome.kind != SUCCEEDED]
    while pending:
        item = pending[0]
        try:
            stored = _write_one(item, worker_id)
        except CONNECTION_ERRORS:
            raise
        except UNSTORABLE_ERRORS as exc:
            stored = record_unstorable(item, exc, worker_id)
        pending.pop(0)
        (written if stored is not None else dropped).append(stored or item)


def _write_one(item: Finished, worker_id: str) -> Finished | None:
    """Write one outcome; return what was recorded (None when the claim was lost)."""
    task, outcome = item.task, item.outcome
    if outcome.kind == SUCCEEDED:
        return item if complete_claimed(task, outcome.result) else None
    if outcome.kind == CANCELLED:
        return item if store.cancel_claimed(task, reason=outcome.error) else None
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
    if status is None:
        return None
    if status == TaskStatus.CANCELLED:
        # A cancel was requested while it ran: whatever it raised, it ends cancelled.
        return Finished(task, replace(outcome, kind=CANCELLED, error=reason), item.context)
    return item


def record_unstorable(item: Finished, exc: Exception, worker_id: str) -> Finished | None:
    """Dead-letter a task whose outcome the database refused; None if the claim was lost.

    If even that dead letter cannot be written, the task is failed with a fixed message
    (``fail_unrecordable``): it must not stay ``running`` while its worker lives.
    """
    task, outcome = item.task, item.outcome
    logger.error(
        "could not store the outcome (%s) of task %s: dead-lettering it",
        outcome.kind,
        task.id,
        exc_info=True,
        extra={"task_id": str(task.id), "task_type": task.task_type, "attempt": task.attempts},
    )
    error = recordable(
        f"the outcome of this attempt ({outcome.kind}) could not be stored: "
        f"{type(exc).__name__}: {exception_message(exc)}",
        MAX_ERROR_CHARS,
    )
    dead = Outcome(DEAD, outcome.duration, error_type=UNSTORABLE_OUTCOME, error=error)
    try:
        letter = store.dead_letter(
            task, worker_id=worker_id, error_type=UNSTORABLE_OUTCOME, error=error
        )
    except CONNECTION_ERRORS:
        raise
    except UNSTORABLE_ERRORS:
        logger.error(
            "could not dead-letter task %s either: failing it with a fixed message",
            task.id,
            exc_info=True,
            extra={"task_id": str(task.id), "task_type": task.task_type},
        )
        if not fail_unrecordable(task):
            return None
        dead = replace(dead, error=UNRECORDABLE_ERROR)
    else:
        if letter is None:
            return None
    return Finished(task, dead, item.context)


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
