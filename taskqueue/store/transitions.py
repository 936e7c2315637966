"""What a store verb wrote about a claimed task, and the lifecycle signals that implies.

A ``Transition`` is the one record of an outcome once it is stored: the worker's main
thread, the rescue and the shutdown make them, and the signals (``announce``) and the
outcome metrics (``taskqueue.monitoring.recorder``) read them. Neither switches on how
the attempt ended: the status written says it, and ``EVENTS`` says what each status sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.dispatch import Signal

from taskqueue import signals
from taskqueue.core.outcome import Outcome
from taskqueue.events import Severity, emit
from taskqueue.models import AttemptOutcome, TaskStatus
from taskqueue.store.sql import ClaimedTask


@dataclass(frozen=True, slots=True)
class Transition:
    """One claimed task's state change as the store wrote it.

    ``status`` is the ``TaskStatus`` written, None when the write was fenced out (the claim
    was lost: someone else owns the task now, and there is nothing to announce or count).
    """

    task: ClaimedTask
    status: str | None
    worker_id: str = ""  # whose attempt it was
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    # How long the handler ran; None when unknown (a rescue, a cancel at shutdown).
    duration: float | None = None
    # The retry's wait, announced with it; None when it is not announced (a rescue).
    delay: float | None = None
    timed_out: bool = False

    @classmethod
    def of(
        cls, task: ClaimedTask, outcome: Outcome, status: str | None, worker_id: str, **changes: Any
    ) -> Transition:
        """The transition a worker's ``outcome`` made, ``status`` being what was written."""
        fields: dict[str, Any] = {
            "worker_id": worker_id,
            "error_type": outcome.error_type,
            "error": outcome.error,
            "traceback": outcome.traceback,
            "duration": outcome.duration,
            "delay": outcome.delay,
            "timed_out": outcome.attempt_outcome == AttemptOutcome.TIMED_OUT,
        }
        return cls(task, status, **{**fields, **changes})

    @property
    def attempt(self) -> int:
        return self.task.attempts

    @property
    def written(self) -> bool:
        return self.status is not None

    @property
    def failed(self) -> bool:
        """A failed attempt: retried or dead-lettered."""
        return self.status in (TaskStatus.RETRYING, TaskStatus.FAILED)

    @property
    def ran(self) -> bool:
        """Whether the handler ran for a known time (a task withdrawn unstarted never ran)."""
        return self.duration is not None and (
            self.status != TaskStatus.CANCELLED or self.duration > 0
        )

    def events(self) -> list[tuple[Signal, str, str]]:
        """The signals this transition sends, in order: (signal, event name, severity)."""
        if self.status is None:
            return []
        first, *then = EVENTS[self.status]
        # A timeout is announced between the failure and what follows it.
        return [first, TIMED_OUT, *then] if self.failed and self.timed_out else [first, *then]


FAILED = (signals.task_failed, "failed", Severity.WARNING)
TIMED_OUT = (signals.task_timed_out, "timed_out", Severity.WARNING)
EVENTS: dict[str, list[tuple[Signal, str, str]]] = {
    TaskStatus.COMPLETED: [(signals.task_succeeded, "succeeded", Severity.INFO)],
    TaskStatus.CANCELLED: [(signals.task_cancelled, "cancelled", Severity.INFO)],
    TaskStatus.RETRYING: [
        FAILED,
        (signals.task_retry_scheduled, "retry_scheduled", Severity.WARNING),
    ],
    TaskStatus.FAILED: [FAILED, (signals.task_dead_lettered, "dead_lettered", Severity.ERROR)],
}


def announce(transition: Transition) -> None:
    """Send the lifecycle signals of one transition (nothing when it was fenced out).

    No log lines of its own: the taskqueue.lifecycle receiver writes one record per event,
    with this context as extra= fields (taskqueue.monitoring.logging).
    """
    fields = {
        "worker_id": transition.worker_id,
        "duration": transition.duration,
        "error_type": transition.error_type,
        "message": transition.error,
        "traceback": transition.traceback,
    }
    for signal, name, severity in transition.events():
        if signal is signals.task_retry_scheduled and transition.delay is not None:
            message = f"retrying in {transition.delay:.1f} s: {transition.error}"
            emit_for(
                transition.task,
                signal,
                name,
                severity=severity,
                **{**fields, "message": message},
                extra={"delay": transition.delay},
            )
        else:
            emit_for(transition.task, signal, name, severity=severity, **fields)


def emit_for(task: ClaimedTask, signal: Any, name: str, **fields: Any) -> None:
    """Send a lifecycle signal about a claimed task."""
    emit(
        signal,
        name=name,
        task_id=task.id,
        task_type=task.task_type,
        queue=task.queue,
        attempt=task.attempts,
        max_attempts=task.max_attempts,
        **fields,
    )
