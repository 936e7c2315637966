"""Alerts: mail ``ADMINS`` when a task of a critical type is dead-lettered, and post chosen
lifecycle events to a chat webhook (Slack-compatible JSON), throttled across every process.

Receivers only put alerts on an in-process queue; a background thread (started with the
worker, or on the first alert elsewhere) decides and delivers them on its own connection,
so neither SMTP nor the webhook nor the throttling writes ever hold up the claim loop.

Throttling: one ``AlertState`` row per channel and event (``"email:dead_lettered"``,
``"webhook:circuit_opened"``, ...). Whoever moves its ``last_sent_at`` forward with a
compare-and-set (database clock) sends; within ``THROTTLE`` seconds of the last send alerts
are only counted and grouped. The next send after the window carries the summary of what was
held back, and every worker with alerts enabled flushes a pending summary once the window
ends, so a storm gives one message and one summary per window, whatever the process count.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.mail import mail_admins
from django.db import connections
from django.db.utils import DatabaseError
from django.dispatch import Signal
from django.urls import NoReverseMatch, reverse

from taskqueue import signals
from taskqueue.conf import settings as tq_settings
from taskqueue.events import TaskEvent
from taskqueue.store import sql

logger = logging.getLogger("taskqueue.alerts")

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
MAX_QUEUED = 10_000  # alerts waiting for the sender thread; beyond, they are dropped (logged)
MAX_BATCH = 500  # alerts the sender decides in one go
MAX_CAS_TRIES = 20
FLUSH_INTERVAL = 15.0  # seconds between looks for summaries whose window has ended
STOP_TIMEOUT = 10.0  # seconds a stopping worker gives the sender to deliver what is queued
MESSAGE_CHARS = 500
TRACEBACK_CHARS = 4000


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
        since = f" since {_clock(self.since)}" if self.since else ""
        return f"{self.count} more {self.noun(channel)}{since}"

    def text(self, channel: str) -> str:
        parts = [f"{group['count']} x {group['label']}" for group in self.groups]
        grouped = sum(group["count"] for group in self.groups)
        if grouped < self.count:
            parts.append(f"{self.count - grouped} other(s)")
        return f"{self.headline(channel)}: {', '.join(parts)}"


def _clock(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "?"


def _one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
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
                "message": _one_line(alert.message, 200),
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
    from taskqueue.core.registry import registry

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
    from taskqueue.models import TaskType

    return TaskType.objects.using(using).filter(name=alert.task_type, critical=True).exists()


# --- throttling -------------------------------------------------------------------------------


def record(
    key: str, alerts: list[Alert], using: str | None = None, throttle: float | None = None
) -> tuple[Alert | None, Summary | None]:
    """Count ``alerts`` (all of one key) against the throttle.

    Returns the alert to send now (the first, when the window is over and this process won
    the compare-and-set) with the summary of what was held back before it, or
    ``(None, None)`` when they are held back for the next summary.
    """
    from taskqueue.models import AlertState

    using = using or tq_settings.DATABASE
    throttle = throttle_seconds() if throttle is None else throttle
    states = AlertState.objects.using(using)
    event = key.partition(":")[2]
    for _ in range(MAX_CAS_TRIES):
        now = sql.db_now(using)
        state, _ = states.get_or_create(key=key)
        # The row as read: any other process's send or count since then changes one of
        # these two, and makes this update match nothing.
        unchanged = states.filter(pk=state.pk, suppressed=state.suppressed)
        if state.last_sent_at is None:
            unchanged = unchanged.filter(last_sent_at__isnull=True)
        else:
            unchanged = unchanged.filter(last_sent_at=state.last_sent_at)
        window_over = state.last_sent_at is None or now - state.last_sent_at >= timedelta(
            seconds=throttle
        )
        if window_over:
            first, rest = alerts[0], alerts[1:]
            if unchanged.update(
                last_sent_at=now,
                suppressed=len(rest),
                samples=merge_groups([], rest),
                updated_at=now,
            ):
                held = (
                    Summary(event, state.suppressed, state.last_sent_at, list(state.samples))
                    if state.suppressed
                    else None
                )
                return first, held
        elif unchanged.update(
            suppressed=state.suppressed + len(alerts),
            samples=merge_groups(list(state.samples), alerts),
            updated_at=now,
        ):
            return None, None
    logger.warning("alert %s: gave up after %d contended tries", key, MAX_CAS_TRIES)
    return None, None


def flush(using: str | None = None, throttle: float | None = None) -> int:
    """Send the summary of every alert kind whose window ended with alerts held back; return
    how many summaries this process sent."""
    from taskqueue.models import AlertState

    using = using or tq_settings.DATABASE
    throttle = throttle_seconds() if throttle is None else throttle
    now = sql.db_now(using)
    states = AlertState.objects.using(using)
    due = states.filter(suppressed__gt=0, last_sent_at__lte=now - timedelta(seconds=throttle))
    sent = 0
    for state in due:
        channel, _, event = state.key.partition(":")
        if channel not in (EMAIL, WEBHOOK):
            continue
        won = states.filter(
            pk=state.pk, suppressed=state.suppressed, last_sent_at=state.last_sent_at
        ).update(last_sent_at=now, suppressed=0, samples=[], updated_at=now)
        if won:
            summary = Summary(event, state.suppressed, state.last_sent_at, list(state.samples))
            deliver(channel, None, summary)
            sent += 1
    return sent


# --- delivery ---------------------------------------------------------------------------------


def admin_path(task_id: str) -> str:
    """The task's admin page as a path (no host: the worker does not know the site's)."""
    if not task_id:
        return ""
    try:
        return reverse("admin:taskqueue_task_change", args=[task_id])
    except NoReverseMatch:
        return ""


def email_content(alert: Alert | None, summary: Summary | None) -> tuple[str, str]:
    """Subject and body of a mail to ADMINS. The payload is left out on purpose: it may hold
    personal data, and the admin path leads to it."""
    if alert is None:
        assert summary is not None
        subject = _one_line(f"taskqueue: {summary.headline(EMAIL)}", 200)
        return subject, summary_body(summary, EMAIL)
    error = f"{alert.error_type}: {alert.message}" if alert.error_type else alert.message
    # The class name only: the module path is in the body, and subjects are short.
    short_error = alert.error_type.rpartition(".")[2] or "error"
    subject = _one_line(
        f"taskqueue: critical task {alert.task_type} dead-lettered ({short_error})", 200
    )
    attempts = f"{alert.attempt} of {alert.max_attempts}" if alert.attempt else "?"
    lines = [
        f"A task of the critical type {alert.task_type!r} was dead-lettered.",
        "",
        f"Task:      {alert.task_id}",
        f"Type:      {alert.task_type}",
        f"Queue:     {alert.queue}",
        f"Attempts:  {attempts}",
        f"Error:     {_one_line(error, 2000)}",
        f"Worker:    {alert.worker_id}",
        f"Time:      {_clock(alert.time)}",
    ]
    path = admin_path(alert.task_id)
    if path:
        lines.append(f"Admin:     {path}")
    lines += ["", "The payload is not included; see the task in the admin."]
    if summary is not None:
        lines += ["", summary_body(summary, EMAIL)]
    if alert.traceback:
        lines += ["", alert.traceback[-TRACEBACK_CHARS:]]
    return subject, "\n".join(lines)


def summary_body(summary: Summary, channel: str) -> str:
    lines = [f"{summary.headline(channel)}:"]
    for group in summary.groups:
        example = [f"e.g. task {group['task_id']}"] if group.get("task_id") else []
        example += [group["message"]] if group.get("message") else []
        suffix = f" ({': '.join(example)})" if example else ""
        lines.append(f"  {group['count']} x {group['label']}{suffix}")
    grouped = sum(group["count"] for group in summary.groups)
    if grouped < summary.count:
        lines.append(f"  {summary.count - grouped} other(s)")
    return "\n".join(lines)


# "@" before a word: Slack needs <!channel> to notify, but Mattermost and Discord, which take
# the same JSON, notify on a bare @channel, @here, @everyone or @user.
_MENTION = re.compile(r"@(?=\w)")


def escape_chat_text(text: str) -> str:
    """Return ``text`` with chat markup made inert: ``&``, ``<``, ``>`` and mentions."""
    # Slack's rule for text that is not markup; "&" first, or the others would be doubled.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b", text)


def webhook_text(alert: Alert | None, summary: Summary | None) -> str:
    """The chat message: plain text, every character of task data escaped."""
    lines = []
    if alert is not None:
        if alert.event in TASK_EVENTS:
            what = "dead-lettered" if alert.event == "dead_lettered" else "timed out"
            attempts = (
                f" after attempt {alert.attempt}/{alert.max_attempts}" if alert.attempt else ""
            )
            error = f"{alert.error_type}: {alert.message}" if alert.error_type else alert.message
            line = (
                f"[taskqueue] task {alert.task_id} ({alert.task_type}, queue {alert.queue}) "
                f"{what}{attempts}: {_one_line(error)}"
            )
            path = admin_path(alert.task_id)
            if path:
                line += f" (admin: {path})"
        else:
            line = f"[taskqueue] {_one_line(alert.message) or alert.label}"
        lines.append(line)
    if summary is not None:
        prefix = "...and " if alert is not None else "[taskqueue] "
        lines.append(prefix + _one_line(summary.text(WEBHOOK), 3000))
    # Everything above is plain text, mostly task data (types, queues, errors, labels):
    # escaped as a whole, so no piece can be missed. The admin path stays plain text (no
    # host is known here, so no link markup); markup added later must come after this.
    return escape_chat_text("\n".join(lines))


def deliver(channel: str, alert: Alert | None, summary: Summary | None) -> bool:
    """Send one message; failures are logged, never raised, never retried."""
    try:
        if channel == EMAIL:
            subject, body = email_content(alert, summary)
            mail_admins(subject, body, fail_silently=False)
        else:
            post_webhook(webhook_text(alert, summary))
        return True
    except Exception as exc:
        logger.warning(
            "taskqueue %s alert could not be sent: %s: %s",
            channel,
            type(exc).__name__,
            exc,
            extra={"channel": channel, "event": (alert or summary).event},  # type: ignore[union-attr]
        )
        return False


def post_webhook(text: str) -> None:
    url = webhook_url()
    if url is None:
        raise ValueError("TASKQUEUE['ALERTS']['WEBHOOK_URL'] is not set")
    # Checked here too, not only by manage.py check: urllib would also open file: URLs.
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("TASKQUEUE['ALERTS']['WEBHOOK_URL'] must be an http(s) URL")
    host = urlsplit(url).hostname
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "taskqueue-alerts"},
        method="POST",
    )
    timeout = float(config()["WEBHOOK_TIMEOUT"])
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            reply.read(1024)
    except urllib.error.HTTPError as exc:
        # The URL is a secret on most chat services: name its host only.
        raise RuntimeError(f"webhook at {host} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"webhook at {host} unreachable: {reason}") from None


# --- the sender thread ------------------------------------------------------------------------


_STOP = object()


def _flush_interval() -> float:
    try:
        return min(FLUSH_INTERVAL, throttle_seconds())
    except (KeyError, TypeError, ValueError):
        return FLUSH_INTERVAL  # a bad THROTTLE is reported by manage.py check (E002)


class AlertSender:
    """The per-process queue and thread that decide and deliver alerts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[Any] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._dropped = 0

    def start(self) -> None:
        with self._lock:
            # After a fork the thread is gone, though its object was copied.
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._queue = queue.Queue(MAX_QUEUED)
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="taskqueue-alerts", daemon=True
            )
            self._thread.start()

    def submit(self, alerts: list[Alert]) -> None:
        self.start()
        for alert in alerts:
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self._dropped += 1
                if self._dropped in (1, 100) or self._dropped % 10_000 == 0:
                    logger.warning(
                        "taskqueue alerts: %d alert(s) dropped: %d already wait to be sent",
                        self._dropped,
                        MAX_QUEUED,
                    )

    def idle(self) -> bool:
        """Nothing queued or being decided (tests poll this)."""
        return self._queue.unfinished_tasks == 0

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then end the thread."""
        with self._lock:
            thread, pending = self._thread, self._queue
            self._thread = None
        if thread is None or not thread.is_alive():
            return
        try:
            pending.put(_STOP, timeout=timeout)
        except queue.Full:
            logger.warning("taskqueue alerts: stopping with %d alert(s) unsent", pending.qsize())
            return
        thread.join(timeout)

    def _run(self, pending: queue.Queue[Any]) -> None:
        next_flush = time.monotonic() + _flush_interval()
        try:
            while True:
                wait = max(next_flush - time.monotonic(), 0.0)
                try:
                    batch = [pending.get(timeout=wait)]
                except queue.Empty:
                    batch = []
                while batch and len(batch) < MAX_BATCH:
                    try:
                        batch.append(pending.get_nowait())
                    except queue.Empty:
                        break
                stopping = any(item is _STOP for item in batch)
                try:
                    self._decide([item for item in batch if item is not _STOP])
                finally:
                    for _ in batch:
                        pending.task_done()
                if stopping:
                    return
                if time.monotonic() >= next_flush:
                    self._guarded("flush", flush)
                    next_flush = time.monotonic() + _flush_interval()
        finally:
            connections.close_all()

    def _decide(self, alerts: list[Alert]) -> None:
        by_key: dict[str, list[Alert]] = {}
        for alert in alerts:
            by_key.setdefault(alert.key, []).append(alert)
        for key, group in by_key.items():
            self._guarded(key, self._decide_key, key, group)

    def _decide_key(self, key: str, alerts: list[Alert]) -> None:
        using = tq_settings.DATABASE
        alerts = [alert for alert in alerts if wants(alert, using)]
        if not alerts:
            return
        send, held = record(key, alerts, using)
        if send is not None:
            deliver(send.channel, send, held)

    def _guarded(self, what: str, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except DatabaseError as exc:
            logger.warning("taskqueue alerts (%s): database unavailable: %s", what, exc)
            connections[tq_settings.DATABASE].close()
        except Exception:
            logger.exception("taskqueue alerts (%s) failed", what)


alert_sender = AlertSender()


# --- receivers --------------------------------------------------------------------------------


def on_event(sender: Any = None, event: TaskEvent | None = None, **kwargs: Any) -> None:
    """Queue the alerts of one lifecycle event; never raises into the caller."""
    if event is None:
        return
    try:
        alerts = alerts_for(event)
        if alerts:
            alert_sender.submit(alerts)
    except Exception:
        logger.exception("taskqueue alerts: could not queue the alerts of %s", event.name)


def on_worker_started(sender: Any = None, **kwargs: Any) -> None:
    # Started with the worker even before any alert, so it flushes pending summaries.
    try:
        if enabled():
            alert_sender.start()
    except Exception:
        logger.exception("taskqueue alerts: could not start the sender")


def on_worker_stopped(sender: Any = None, **kwargs: Any) -> None:
    try:
        alert_sender.stop()
    except Exception:
        logger.exception("taskqueue alerts: could not stop the sender")


def connect() -> None:
    """Connect the alert receivers (``TaskqueueConfig.ready``)."""
    for name, signal in EVENT_SIGNALS.items():
        signal.connect(on_event, dispatch_uid=f"taskqueue.alerts.{name}")
    signals.worker_started.connect(on_worker_started, dispatch_uid="taskqueue.alerts.start")
    signals.worker_stopped.connect(on_worker_stopped, dispatch_uid="taskqueue.alerts.stop")
