"""What became of one attempt: the ``Outcome`` of running a claimed task, and its kinds.

Outcomes are made here and in ``taskqueue.worker.executor`` (``failed_attempt``, which needs
the task's retry strategy); the worker maps each to one store verb in
``taskqueue.worker.outcomes.record``, the one place that switches on the kind. What the
store wrote is a ``taskqueue.store.transitions.Transition``: signals and metrics read that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskqueue.core.payloads import storable_text
from taskqueue.models import AttemptOutcome

# What an outcome keeps of a failure's text. A handler may raise with a message of any size
# (or any content): it is cut to these lengths and escaped where the database would refuse
# it, so that recording the failure can never fail. The error type is a 255-character column.
MAX_ERROR_TYPE_CHARS = 255
MAX_ERROR_CHARS = 10_000
MAX_TRACEBACK_CHARS = 50_000


class OutcomeKind(StrEnum):
    """How an attempt ended. The values travel between processes (``pools.wire``).

    A timeout is no kind of its own: it is a failed attempt (``RETRY`` or ``DEAD``) whose
    ``attempt_outcome`` is ``AttemptOutcome.TIMED_OUT``.
    """

    SUCCEEDED = "succeeded"
    COMMITTED = "committed"  # succeeded, and recorded in the handler's own transaction (atomic)
    LOST = "lost"  # the claim was lost before an atomic handler could commit: nothing to record
    RETRY = "retry"
    DEAD = "dead"
    CANCELLED = "cancelled"  # stopped after a cancel request, or withdrawn before it started


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt, and (through its kind) the store verb it maps to."""

    kind: OutcomeKind
    duration: float
    result: Any = None
    delay: float = 0.0
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    attempt_outcome: str = AttemptOutcome.FAILED

    @classmethod
    def succeeded(cls, duration: float, result: Any = None) -> Outcome:
        return cls(OutcomeKind.SUCCEEDED, duration, result=result)

    @classmethod
    def committed(cls, duration: float) -> Outcome:
        """An atomic handler's success, already written in its own transaction."""
        return cls(OutcomeKind.COMMITTED, duration)

    @classmethod
    def lost(cls, duration: float, error: str) -> Outcome:
        """An atomic handler whose claim was lost: its effects were rolled back."""
        return cls(OutcomeKind.LOST, duration, error=error)

    @classmethod
    def dead(cls, duration: float, error_type: str, error: str, traceback: str = "") -> Outcome:
        """A failure no retry can mend; its texts are made recordable here."""
        return cls(
            OutcomeKind.DEAD,
            duration,
            error_type=recordable(error_type, MAX_ERROR_TYPE_CHARS),
            error=recordable(error, MAX_ERROR_CHARS),
            traceback=recordable(traceback, MAX_TRACEBACK_CHARS),
        )

    @classmethod
    def cancelled(cls, duration: float, reason: str) -> Outcome:
        """A task stopped by the worker after a cancel request (or withdrawn unstarted)."""
        return cls(
            OutcomeKind.CANCELLED,
            duration,
            error_type="Cancelled",
            error=recordable(reason, MAX_ERROR_CHARS),
        )

    @property
    def failed(self) -> bool:
        """Whether the attempt failed (to be retried or dead-lettered)."""
        return self.kind in (OutcomeKind.RETRY, OutcomeKind.DEAD)


def recordable(text: str, limit: int) -> str:
    """Return ``text`` cut to ``limit`` characters (head and tail kept) and storable."""
    text = storable_text(_cut(text, limit))
    # Escaping can lengthen it (a NUL becomes four characters): cut what it escaped.
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit < 1000:  # a name, not a message: cut it plainly
        return text[: limit - 1] + "…"
    omitted = f"\n[... {len(text) - limit:,} characters omitted ...]\n"
    # The tail of a traceback (the failing frame and the message) matters most.
    head = limit // 4 - len(omitted)
    return text[:head] + omitted + text[len(text) - (limit - head - len(omitted)) :]
