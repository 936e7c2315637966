"""The store verbs that record a worker's outcomes, each returning the ``Transition`` made.

The worker maps each ``Outcome`` to one of these (``taskqueue.worker.outcomes.record``);
they write through the lease-fenced writes of ``taskqueue.store.outcome_writes`` and say what
was written, so that what is announced and counted is what the database holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskqueue.core.outcome import Outcome
from taskqueue.models import TaskStatus
from taskqueue.store import outcome_writes, salvage
from taskqueue.store.sql import ClaimedTask
from taskqueue.store.transitions import Transition


def settle_successes(
    finished: Sequence[tuple[ClaimedTask, Outcome]], worker_id: str
) -> list[Transition]:
    """Complete every task in one statement; a task whose claim was lost gets status None."""
    done = outcome_writes.complete_tasks([(task, outcome.result) for task, outcome in finished])
    return [
        Transition.of(task, outcome, TaskStatus.COMPLETED if task.id in done else None, worker_id)
        for task, outcome in finished
    ]


def settle_success(task: ClaimedTask, outcome: Outcome, worker_id: str) -> Transition:
    """Complete one task in a transaction of its own."""
    completed = outcome_writes.complete_claimed(task, outcome.result)
    return Transition.of(task, outcome, TaskStatus.COMPLETED if completed else None, worker_id)


def settle_cancellation(task: ClaimedTask, outcome: Outcome, worker_id: str) -> Transition:
    """Record a task the worker stopped, or withdrew before it started."""
    cancelled = outcome_writes.cancel_claimed(task, reason=outcome.error)
    return Transition.of(task, outcome, TaskStatus.CANCELLED if cancelled else None, worker_id)


def settle_failure(
    task: ClaimedTask, outcome: Outcome, worker_id: str, *, dead: bool
) -> Transition:
    """Dead-letter (``dead``) or retry a failed attempt; cancel it instead if a cancel was
    requested while it ran."""
    reason = cancelled_by_failure(outcome)
    status = outcome_writes.fail_attempt(
        task,
        worker_id=worker_id,
        dead=dead,
        delay=outcome.delay,
        error_type=outcome.error_type,
        error=outcome.error,
        traceback=outcome.traceback,
        outcome=outcome.attempt_outcome,
        cancel_reason=reason,
    )
    if status == TaskStatus.CANCELLED:
        # A cancel was requested while it ran: whatever it raised, it ends cancelled.
        return Transition.of(task, outcome, status, worker_id, error=reason)
    return Transition.of(task, outcome, status, worker_id)


def settle_dead_letter(
    task: ClaimedTask, duration: float, worker_id: str, *, error_type: str, error: str
) -> Transition:
    """Dead-letter a task with an error of the worker's own (its outcome could not be stored)."""
    letter = outcome_writes.dead_letter(
        task, worker_id=worker_id, error_type=error_type, error=error
    )
    status = TaskStatus.FAILED if letter is not None else None
    return Transition(
        task, status, worker_id=worker_id, error_type=error_type, error=error, duration=duration
    )


def settle_unrecordable(task: ClaimedTask, duration: float, worker_id: str) -> Transition:
    """Fail a task with a fixed message when not even its dead letter could be written."""
    status = TaskStatus.FAILED if salvage.fail_unrecordable(task) else None
    return Transition(
        task,
        status,
        worker_id=worker_id,
        error_type=salvage.UNRECORDABLE_TYPE,
        error=salvage.UNRECORDABLE_ERROR,
        duration=duration,
    )


def cancelled_by_failure(outcome: Outcome) -> str:
    """The reason a failed attempt of a task with a cancel request is recorded as cancelled."""
    return (
        "cancelled while running: after the cancel request the handler ended with "
        f"{outcome.error_type}: {outcome.error}"
    )
