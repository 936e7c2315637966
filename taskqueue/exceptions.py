"""Exceptions raised by taskqueue, and the two a handler raises to steer its own outcome."""

from __future__ import annotations

from datetime import timedelta


class TaskqueueError(Exception):
    """Base class of the errors taskqueue raises."""


class UnknownTaskType(TaskqueueError, LookupError):
    """No handler is registered under this task type."""


class InvalidPayload(TaskqueueError, ValueError):
    """The payload cannot be stored or cannot be passed to the handler."""


class PayloadTooLarge(InvalidPayload):
    """The serialised payload is larger than ``MAX_PAYLOAD_BYTES``."""


class InvalidTaskOption(TaskqueueError, ValueError):
    """An enqueue or handler option (priority, queue, time, attempts...) is not valid."""


class Retry(Exception):
    """Raise from a handler to retry the task, optionally after ``delay`` seconds.

    The worker accepts a ``delay`` from 0 to ``taskqueue.core.limits.MAX_DELAY`` (10 years); any
    other (NaN, infinite, too long) fails the attempt with ``InvalidTaskOption`` naming it,
    and the handler's retry strategy decides what follows.
    """

    def __init__(self, reason: str = "", *, delay: float | timedelta | None = None) -> None:
        super().__init__(reason or "retry requested by the handler")
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, int | float) and delay < 0:
            raise ValueError("Retry delay must not be negative")
        self.delay = delay


class PermanentError(Exception):
    """Raise from a handler to fail the task at once, without retrying."""


class InvalidResult(TaskqueueError):
    """The handler returned a value that cannot be stored as JSON."""


class ClaimLost(TaskqueueError):
    """The worker no longer owns the task (rescued, cancelled or released meanwhile)."""


class HandlerTimeout(TaskqueueError):
    """The handler ran past its timeout and was stopped."""
