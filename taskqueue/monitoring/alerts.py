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

import logging
import os
import queue
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import connections
from django.db.utils import DatabaseError

from taskqueue import signals, store
from taskqueue.events import TaskEvent
from taskqueue.monitoring.alert_delivery import deliver
from taskqueue.monitoring.alert_rules import (
    EMAIL,
    EVENT_SIGNALS,
    WEBHOOK,
    Alert,
    Summary,
    alerts_for,
    enabled,
    merge_groups,
    throttle_seconds,
    wants,
)
from taskqueue.store import alert_state

logger = logging.getLogger("taskqueue.alerts")

MAX_QUEUED = 10_000  # alerts waiting for the sender thread; beyond, they are dropped (logged)
MAX_BATCH = 500  # alerts the sender decides in one go
MAX_CAS_TRIES = 20
FLUSH_INTERVAL = 15.0  # seconds between looks for summaries whose window has ended
STOP_TIMEOUT = 10.0  # seconds a stopping worker gives the sender to deliver what is queued


# --- throttling -------------------------------------------------------------------------------


def record(
    key: str, alerts: list[Alert], using: str | None = None, throttle: float | None = None
) -> tuple[Alert | None, Summary | None]:
    """Count ``alerts`` (all of one key) against the throttle.

    Returns the alert to send now (the first, when the window is over and this process won
    the compare-and-set) with the summary of what was held back before it, or
    ``(None, None)`` when they are held back for the next summary.
    """
    using = using or store.database_alias()
    throttle = throttle_seconds() if throttle is None else throttle
    event = key.partition(":")[2]
    for _ in range(MAX_CAS_TRIES):
        now = store.db_now(using)
        state = alert_state.current(using, key)
        window_over = state.last_sent_at is None or now - state.last_sent_at >= timedelta(
            seconds=throttle
        )
        if window_over:
            first, rest = alerts[0], alerts[1:]
            if alert_state.record_send(using, state, now, len(rest), merge_groups([], rest)):
                held = (
                    Summary(event, state.suppressed, state.last_sent_at, list(state.samples))
                    if state.suppressed
                    else None
                )
                return first, held
        elif alert_state.record_held_back(
            using,
            state,
            now,
            state.suppressed + len(alerts),
            merge_groups(list(state.samples), alerts),
        ):
            return None, None
    logger.warning("alert %s: gave up after %d contended tries", key, MAX_CAS_TRIES)
    return None, None


def flush(using: str | None = None, throttle: float | None = None) -> int:
    """Send the summary of every alert kind whose window ended with alerts held back; return
    how many summaries this process sent."""
    using = using or store.database_alias()
    throttle = throttle_seconds() if throttle is None else throttle
    now = store.db_now(using)
    sent = 0
    for state in alert_state.summaries_due(using, now, throttle):
        channel, _, event = state.key.partition(":")
        if channel not in (EMAIL, WEBHOOK):
            continue
        if alert_state.record_summary_sent(using, state, now):
            summary = Summary(event, state.suppressed, state.last_sent_at, list(state.samples))
            deliver(channel, None, summary)
            sent += 1
    return sent


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
        using = store.database_alias()
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
            connections[store.database_alias()].close()
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
