"""Lifecycle event objects and the safe way to send them."""

from __future__ import annotations

import logging
import uuid
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


def emit(signal: Signal, **fields: Any) -> None:
    """Send ``signal`` with a ``TaskEvent``; a receiver that raises is logged, never re-raised."""
    # Building the event costs more than the check: skip both when nobody listens.
    if not signal.has_listeners():
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
