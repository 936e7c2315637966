"""Record what became of finished tasks: each outcome mapped to the store verb that writes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db.utils import DatabaseError, InterfaceError, OperationalError

from taskqueue.context import TaskContext
from taskqueue.core.outcome import MAX_ERROR_CHARS, Outcome, OutcomeKind, recordable
from taskqueue.models import TaskStatus
from taskqueue.store import ClaimedTask, settling
from taskqueue.store.salvage import UNRECORDABLE_TYPE
from taskqueue.store.transitions import Transition
from taskqueue.worker.executor import exception_message

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
    pending: list[Finished], written: list[Transition], dropped: list[Transition], worker_id: str
) -> None:
    """Write outcomes: every success in one statement, the others one by one (they are rarer).

    Each outcome leaves ``pending`` once its write has committed, as a ``Transition``: into
    ``written``, or into ``dropped`` (status None) when the lease no longer held (someone
    else owns the task now). When the database fails midway the caller knows exactly which
    ones must be written again.

    A connection error is raised (the outcomes wait for the database). Any other error
    writing a batch of successes falls back to writing them one by one; an outcome that
    cannot be written alone is dead-lettered instead (``record_unstorable``).
    """
    successes = [item for item in pending if item.outcome.kind is OutcomeKind.SUCCEEDED]
    if successes:
        try:
            transitions = settling.settle_successes(
                [(item.task, item.outcome) for item in successes], worker_id
            )
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
            for transition in transitions:
                (written if transition.written else dropped).append(transition)
            pending[:] = [
                item for item in pending if item.outcome.kind is not OutcomeKind.SUCCEEDED
            ]
    while pending:
        item = pending[0]
        try:
            transition = settle(item, worker_id)
        except CONNECTION_ERRORS:
            raise
        except UNSTORABLE_ERRORS as exc:
            transition = record_unstorable(item, exc, worker_id)
        pending.pop(0)
        (written if transition.written else dropped).append(transition)


def settle(item: Finished, worker_id: str) -> Transition:
    """Write one outcome with the store verb its kind maps to: the one switch on the kind."""
    task, outcome = item.task, item.outcome
    match outcome.kind:
        case OutcomeKind.SUCCEEDED:
            return settling.settle_success(task, outcome, worker_id)
        case OutcomeKind.COMMITTED:
            # An atomic handler wrote its completion in its own transaction.
            return Transition.of(task, outcome, TaskStatus.COMPLETED, worker_id)
        case OutcomeKind.LOST:
            # Its claim was lost before it could commit: nothing to record.
            logger.warning(
                "dropped the outcome of task %s: %s",
                task.id,
                outcome.error,
                extra={"task_id": str(task.id), "task_type": task.task_type},
            )
            return Transition.of(task, outcome, None, worker_id)
        case OutcomeKind.CANCELLED:
            return settling.settle_cancellation(task, outcome, worker_id)
        case OutcomeKind.RETRY:
            return settling.settle_failure(task, outcome, worker_id, dead=False)
        case OutcomeKind.DEAD:
            return settling.settle_failure(task, outcome, worker_id, dead=True)


def record_unstorable(item: Finished, exc: Exception, worker_id: str) -> Transition:
    """Dead-letter a task whose outcome the database refused (status None if the claim was
    lost).

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
    try:
        return settling.settle_dead_letter(
            task, outcome.duration, worker_id, error_type=UNSTORABLE_OUTCOME, error=error
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
        return settling.settle_unrecordable(task, outcome.duration, worker_id)
