"""Lifecycle event objects and the safe way to send them.

Each signal of ``taskqueue.signals`` is sent once per transition, with ``event=TaskEvent``:

=====================  ========  ===========================================================
signal                 severity  sent by, when
=====================  ========  ===========================================================
task_enqueued          info      the enqueueing process, on commit (enqueue, enqueue_many,
                                 workflows, schedule firings, "run now")
task_started           info      the process running the handler (the handler process with
                                 the default pool), just before the handler is called
task_succeeded         info      the worker, once the completion is written (duration set)
task_failed            warning   every failed attempt (handler error, timeout, lost worker),
                                 followed by task_retry_scheduled or task_dead_lettered
task_timed_out         warning   after task_failed, when the attempt ran past its timeout
task_retry_scheduled   warning   the failed task waits for its backoff (``extra["delay"]``)
task_dead_lettered     error     attempts exhausted or permanent error: the task is failed
task_cancelled         info      cancelled before it ran (``taskqueue.cancel``, on commit),
                                 withdrawn or stopped by its worker, cancelled at shutdown
                                 or at rescue, and each dependent cancelled in a cascade
worker_started/stopped info      the worker process (``extra``: queues, concurrency, pid)
circuit_opened         warning   the failure that opened a type's circuit, on commit
circuit_closed         info      the success (or the admin reset) that closed it
schedule_late          warning   once per late episode of a schedule
=====================  ========  ===========================================================

``time`` is the emitting process's clock (UTC): events are announcements, not records of
state. Tasks' own timestamps stay on the database clock.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("taskqueue.events")


class Severity:
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class TaskEvent:
    """One lifecycle event; every taskqueue signal is sent with one of these as ``event``."""

    name: str
    severity: str = Severity.INFO
    task_id: uuid.UUID | None = None
    task_type: str = ""
    queue: str = ""
    attempt: int | None = None
    max_attempts: int | None = None
    duration: float | None = None
    message: str = ""
    error_type: str = ""
    traceback: str = ""
    worker_id: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    extra: dict[str, Any] = field(default_factory=dict)


# Built-in receivers, by the dispatch_uid they are connected with, and whether each wants an
# event of a given name and severity right now. An event that only such receivers would
# get, none of them wanting it, is never built: the common case of a worker whose log level
# and stream severity are above "info" costs two dictionary lookups per event, not the
# event object and the dispatch (about 8 us).
_builtin_wants: dict[str, Callable[[str, str], bool]] = {}


def register_builtin(dispatch_uid: str, wants: Callable[[str, str], bool]) -> None:
    """Declare the receiver connected with ``dispatch_uid`` built in, and what it wants:
    ``wants(name, severity)`` must be cheap and must not raise."""
    _builtin_wants[dispatch_uid] = wants


def _nobody_wants(signal: Signal, name: str, severity: str) -> bool:
    for entry in signal.receivers:
        # Each entry starts with its lookup key, (dispatch_uid or receiver id, sender id).
        uid = entry[0][0]
        wants = _builtin_wants.get(uid) if isinstance(uid, str) else None
        if wants is None or wants(name, severity):
            return False
    return True


def emit(signal: Signal, **fields: Any) -> None:
    """Send ``signal`` with a ``TaskEvent``; a receiver that raises is logged, never re-raised."""
    # Building the event costs more than the check: skip both when nobody wants it (no
    # receiver at all, or only built-in ones that would ignore it).
    if _nobody_wants(signal, fields.get("name", ""), fields.get("severity", Severity.INFO)):
        return
    event = TaskEvent(**fields)
    for receiver, outcome in signal.send_robust(sender=TaskEvent, event=event):
        if isinstance(outcome, Exception):
            logger.error(
                "taskqueue signal receiver %r failed on %s",
                receiver,
                event.name,
                exc_info=(type(outcome), outcome, outcome.__traceback__),
                extra={"task_id": str(event.task_id), "task_type": event.task_type},
            )
