"""What alerts a lifecycle event gives: the ``Alert`` and ``Summary`` records, the alert
settings (``TASKQUEUE["ALERTS"]``) and the rules that pick channels for an event.

``taskqueue.monitoring.alerts`` throttles and sends them, through
``taskqueue.monitoring.alert_delivery``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings as django_settings
from django.dispatch import Signal

from taskqueue import signals
from taskqueue.conf import settings as tq_settings
from taskqueue.core.registry import registry
from taskqueue.events import TaskEvent
from taskqueue.models import TaskType

EMAIL = "email"
WEBHOOK = "webhook"

# The events a webhook may be told to post (``ALERTS["WEBHOOK_EVENTS"]``).
EVENT_SIGNALS: dict[str, Signal] = {
    "dead_lettered": signals.task_dead_lettered,
    "timed_out": signals.task_timed_out,
    "circuit_opened": signals.circuit_opened,
    "circuit_closed": signals.circuit_closed,
    "schedule_late": signals.schedule_late,
}
# Events about one task, where "critical" (of its type) means something.
TASK_EVENTS = frozenset({"dead_lettered", "timed_out"})
NOUNS = {
    "dead_lettered": ("dead letter", "dead letters"),
    "timed_out": ("timeout", "timeouts"),
    "circuit_opened": ("circuit opening", "circuit openings"),
    "circuit_closed": ("circuit closing", "circuit closings"),
    "schedule_late": ("late schedule", "late schedules"),
}

MAX_GROUPS = 20  # distinct (error, type) groups kept per held-back summary
MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Alert:
    """One event bound for one channel."""

    channel: str
    event: str
    task_type: str = ""
    queue: str = ""
    task_id: str = ""
    attempt: int | None = None
    max_attempts: int | None = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    worker_id: str = ""
    time: datetime | None = None
    schedule: str = ""
    # None: the type is not registered in this process; the sender reads TaskType.critical.
    critical: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.event}"

    @property
    def label(self) -> str:
        """What alerts are grouped by in a summary."""
        if self.event in TASK_EVENTS:
            return f"{self.error_type or 'error'} in {self.task_type}"
        if self.event == "schedule_late":
            return f"schedule {self.schedule or self.task_type}"
        return f"circuit of {self.task_type}"


@dataclass
class Summary:
    """Alerts held back since ``since`` (the previous send)."""

    event: str
    count: int
    since: datetime | None
    groups: list[dict[str, Any]] = field(default_factory=list)

    def noun(self, channel: str) -> str:
        one, many = NOUNS.get(self.event, ("alert", "alerts"))
        noun = one if self.count == 1 else many
        return f"critical {noun}" if channel == EMAIL and self.event in TASK_EVENTS else noun

    def headline(self, channel: str) -> str:
        since = f" since {clock_text(self.since)}" if self.since else ""
        return f"{self.count} more {self.noun(channel)}{since}"

    def text(self, channel: str) -> str:
        parts = [f"{group['count']} x {group['label']}" for group in self.groups]
        grouped = sum(group["count"] for group in self.groups)
        if grouped < self.count:
            parts.append(f"{self.count - grouped} other(s)")
        return f"{self.headline(channel)}: {', '.join(parts)}"


def clock_text(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "?"


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def merge_groups(groups: list[dict[str, Any]], alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """Add ``alerts`` to the held-back groups (a copy); past MAX_GROUPS they only count in
    the total."""
    merged = [dict(group) for group in groups]
    by_label = {group["label"]: group for group in merged}
    for alert in alerts:
        group = by_label.get(alert.label)
        if group is not None:
            group["count"] += 1
        elif len(merged) < MAX_GROUPS:
            group = {
                "label": alert.label,
                "count": 1,
                "task_id": alert.task_id,
                "message": one_line(alert.message, 200),
            }
            merged.append(group)
            by_label[alert.label] = group
    return merged


# --- settings ---------------------------------------------------------------------------------


def config() -> dict[str, Any]:
    return tq_settings.ALERTS


def email_enabled() -> bool:
    return bool(config().get("EMAIL")) and bool(getattr(django_settings, "ADMINS", None))


def webhook_url() -> str | None:
    return config().get("WEBHOOK_URL") or None


def enabled() -> bool:
    return email_enabled() or webhook_url() is not None


def throttle_seconds() -> float:
    return float(config()["THROTTLE"])


# --- from signal to alerts --------------------------------------------------------------------


def _critical(task_type: str) -> bool | None:
    if task_type in registry:
        return registry.get(task_type).critical
    return None


def alerts_for(event: TaskEvent) -> list[Alert]:
    """The alerts one lifecycle event gives under the current settings."""
    if event.name not in EVENT_SIGNALS or not enabled():
        return []
    critical = _critical(event.task_type) if event.name in TASK_EVENTS else None
    common = {
        "event": event.name,
        "task_type": event.task_type,
        "queue": event.queue,
        "task_id": str(event.task_id) if event.task_id else "",
        "attempt": event.attempt,
        "max_attempts": event.max_attempts,
        "error_type": event.error_type,
        "message": event.message,
        "traceback": event.traceback,
        "worker_id": event.worker_id,
        "time": event.time,
        "schedule": str(event.extra.get("schedule", "")),
        "critical": critical,
    }
    alerts = []
    if event.name == "dead_lettered" and critical is not False and email_enabled():
        alerts.append(Alert(channel=EMAIL, **common))
    cfg = config()
    if webhook_url() and event.name in (cfg.get("WEBHOOK_EVENTS") or ()):
        critical_only = cfg.get("WEBHOOK_CRITICAL_ONLY") and event.name in TASK_EVENTS
        if not (critical_only and critical is False):
            alerts.append(Alert(channel=WEBHOOK, **common))
    return alerts


def wants(alert: Alert, using: str) -> bool:
    """Whether an alert still goes out once the criticality of its type is known."""
    needs_critical = alert.channel == EMAIL or (
        alert.event in TASK_EVENTS and config().get("WEBHOOK_CRITICAL_ONLY")
    )
    if not needs_critical or alert.critical is not None:
        return not needs_critical or bool(alert.critical)
    return TaskType.objects.using(using).filter(name=alert.task_type, critical=True).exists()
