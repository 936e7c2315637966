"""The built-in log receiver: one structured record per lifecycle event.

Every taskqueue signal is connected to ``log_event`` in ``TaskqueueConfig.ready()``. Each
event becomes one record on the ``taskqueue.lifecycle`` logger, at the level of its severity
(info -> INFO, warning -> WARNING, error -> ERROR), with the event's context as ``extra=``
attributes of the record, so a JSON formatter or a log shipper gets them as fields.

This is the one place that logs task outcomes: the worker no longer writes its own line
for a retry, a dead letter, a cancellation, a circuit or a late schedule. Turning
``TASKQUEUE["EVENTS"]["LOG"]`` off silences those records too (the signals are still sent).

The logger is ``taskqueue.lifecycle``, not ``taskqueue.events``: that one reports receivers
that raised, and a project may want it loud while keeping the per-task records quiet.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from taskqueue.conf import settings as tq_settings
from taskqueue.events import Severity, TaskEvent

logger = logging.getLogger("taskqueue.lifecycle")

LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
}

# The record attributes every lifecycle record carries (None where the event has no value).
EXTRA_FIELDS = (
    "event",
    "severity",
    "task_id",
    "task_type",
    "queue",
    "attempt",
    "max_attempts",
    "duration_ms",
    "error_type",
    "worker_id",
    "traceback",
)

_enabled: bool | None = None  # EVENTS["LOG"], read once and again when settings change


def logging_enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = bool(tq_settings.EVENTS.get("LOG", True))
    return _enabled


@receiver(setting_changed)
def _forget_setting(setting: str, **kwargs: Any) -> None:
    global _enabled
    if setting == "TASKQUEUE":
        _enabled = None


def record_extra(event: TaskEvent) -> dict[str, Any]:
    """The ``extra=`` context of an event's record."""
    return {
        "event": event.name,
        "severity": event.severity,
        "task_id": str(event.task_id) if event.task_id is not None else None,
        "task_type": event.task_type or None,
        "queue": event.queue or None,
        "attempt": event.attempt,
        "max_attempts": event.max_attempts,
        "duration_ms": round(event.duration * 1000) if event.duration is not None else None,
        "error_type": event.error_type or None,
        "worker_id": event.worker_id or None,
        # In the record for handlers that keep fields; the message itself stays one line.
        "traceback": event.traceback or None,
    }


def describe(event: TaskEvent) -> str:
    """One line that reads well without the extra fields."""
    parts = [event.name.replace("_", " ")]
    if event.task_id is not None:
        parts.append(f"task {event.task_id}")
    if event.task_type:
        parts.append(f"({event.task_type})" if event.task_id is not None else event.task_type)
    if event.attempt and event.max_attempts:
        parts.append(f"attempt {event.attempt}/{event.max_attempts}")
    if event.duration is not None:
        parts.append(f"in {event.duration * 1000:.0f} ms")
    line = " ".join(parts)
    return f"{line}: {event.message}" if event.message else line


def wants_event(name: str, severity: str) -> bool:
    """Whether an event of this severity would be written (``emit`` asks before building)."""
    return logger.isEnabledFor(LEVELS.get(severity, logging.INFO)) and logging_enabled()


def log_event(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
    """Receiver of every taskqueue signal: write the event as one log record."""
    level = LEVELS.get(event.severity, logging.INFO)
    # Checked first: with the logger below the event's level (INFO events under the
    # default WARNING root), the event costs one comparison here.
    if not logger.isEnabledFor(level) or not logging_enabled():
        return
    logger.log(level, "%s", describe(event), extra=record_extra(event))
