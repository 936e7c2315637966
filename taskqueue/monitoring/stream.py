"""The live event stream: lifecycle events recorded in ``EventRecord``, served as
Server-Sent Events.

Recording. ``record_event`` receives every taskqueue signal (connected in
``TaskqueueConfig.ready()``) and keeps the events at or above ``EVENTS["STREAM"]``
(``"info"``, ``"warning"``, ``"error"``; None records nothing). A worker process buffers
them and its duty thread writes the buffer in one statement about every second
(``FLUSH_INTERVAL``), and once more as it stops, so the hot path never waits on an insert.
A worker's handler processes leave the record of a task's start to the worker (which
records it as it hands the task over), and write whatever else their handler set off after
each task. Every other process (web processes enqueueing and cancelling) writes each event
at once: they emit rarely, and have no thread to flush later. Rows older than
``EVENTS["KEEP"]`` seconds are pruned by retention.

Cost, measured with ``bench/profile_worker.py`` (no-op tasks): with the default
``"warning"`` a successful task records nothing; with ``"info"`` every task adds two rows
(started, succeeded), written in bulk. That suits a demo or a quiet queue, not a busy one.

Serving. ``event_stream`` (``taskqueue.urls``: ``events/``) answers ``text/event-stream``:
it polls ``EventRecord`` by id every ``POLL_INTERVAL`` seconds, sends each new row as
``id:`` / ``event:`` / ``data:`` (JSON) lines, a comment line every ``HEARTBEAT_INTERVAL``
seconds of silence so proxies keep the connection, and ends after ``MAX_DURATION`` seconds
(the browser's ``EventSource`` reconnects with ``Last-Event-ID`` and resumes where it
stopped). Each open stream holds one server thread (or process) and one database
connection for as long as it lasts.

What a streamed event says: name, severity, time, task id, type and queue, worker,
attempt, max attempts, duration, error type and message. Never a payload (events carry
none) and never a traceback: those stay in the task's attempt history in the admin, behind
the task permissions; the stream is for dashboards.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from taskqueue.conf import settings as tq_settings
from taskqueue.events import Severity, TaskEvent
from taskqueue.models import EventRecord
from taskqueue.monitoring.auth import Access, check_access, denied_response
from taskqueue.store.common import database_alias
from taskqueue.store.events import insert_events

logger = logging.getLogger("taskqueue.monitoring.stream")

SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}

FLUSH_INTERVAL = 1.0  # seconds between a worker's writes of its buffered events
# A worker that cannot write (database away) keeps at most this many events, dropping
# the oldest: the stream is for watching, not an audit log.
MAX_BUFFERED = 10_000
MAX_MESSAGE = 2000  # characters of an event's message kept in the row

POLL_INTERVAL = 0.5  # seconds between the stream's queries for new rows
HEARTBEAT_INTERVAL = 15.0  # seconds of silence before a comment line keeps the connection
MAX_DURATION = 300.0  # seconds one response lasts; the client reconnects with Last-Event-ID
BATCH = 500  # rows read per query
RECONNECT_MS = 2000  # the client's wait before reconnecting (the SSE "retry:" field)


# --- settings, cached (read on every event) ----------------------------------------------

_UNSET = object()
_threshold: Any = _UNSET  # lowest severity rank recorded, None: record nothing


def stream_threshold() -> int | None:
    global _threshold
    if _threshold is _UNSET:
        lowest = tq_settings.EVENTS.get("STREAM")
        _threshold = None if lowest is None else SEVERITY_RANK.get(lowest, 0)
    return _threshold


@receiver(setting_changed)
def _forget_setting(setting: str, **kwargs: Any) -> None:
    global _threshold
    if setting == "TASKQUEUE":
        _threshold = _UNSET


# --- recording ---------------------------------------------------------------------------


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    # Extras may hold datetimes or UUIDs (a late schedule's details): store them as JSON.
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def as_record(event: TaskEvent) -> Any:
    """The unsaved ``EventRecord`` of an event (its time is the database's at insert)."""

    data: dict[str, Any] = {"emitted_at": event.time.isoformat()}
    for name in ("attempt", "max_attempts", "duration", "error_type"):
        value = getattr(event, name)
        if value not in (None, ""):
            data[name] = value
    if event.extra:
        data["extra"] = _json_safe(event.extra)
    return EventRecord(
        name=event.name[:50],
        severity=event.severity[:10],
        task_id=event.task_id,
        task_type=event.task_type[:200],
        queue=event.queue[:100],
        worker_id=event.worker_id[:255],
        message=event.message[:MAX_MESSAGE],
        data=data,
    )


class EventBuffer:
    """Writes recorded events: at once, or buffered until ``flush`` (a worker process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffer: list[Any] = []
        self.buffering = False
        self.dropped = 0
        self.skipped: frozenset[str] = frozenset()

    def start_buffering(self, skip: frozenset[str] = frozenset()) -> None:
        """From now on keep events until ``flush`` (a worker flushes from its duty thread);
        never record the events named in ``skip`` (recorded by another process)."""
        self.buffering = True
        self.skipped = skip

    def add(self, event: TaskEvent) -> None:
        if event.name in self.skipped:
            return
        record = as_record(event)
        if not self.buffering:
            _write([record])
            return
        with self.lock:
            self.buffer.append(record)
            if len(self.buffer) > MAX_BUFFERED:
                overflow = len(self.buffer) - MAX_BUFFERED
                del self.buffer[:overflow]
                self.dropped += overflow

    def flush(self) -> int:
        """Write the buffered events in one statement; on failure keep them and raise."""
        with self.lock:
            records, self.buffer = self.buffer, []
            dropped, self.dropped = self.dropped, 0
        if dropped:
            logger.warning("the event stream lost %d event(s): the buffer was full", dropped)
        if not records:
            return 0
        try:
            _write(records)
        except DatabaseError:
            with self.lock:
                # Back in front, oldest first, still bounded.
                self.buffer[:0] = records
                overflow = len(self.buffer) - MAX_BUFFERED
                if overflow > 0:
                    del self.buffer[:overflow]
                    self.dropped += overflow
            raise
        return len(records)


def _write(records: list[Any]) -> None:
    insert_events(records)


event_buffer = EventBuffer()


def wants_severity(name: str, severity: str) -> bool:
    """Whether an event of this severity would be recorded (``emit`` asks before building)."""
    threshold = stream_threshold()
    return threshold is not None and SEVERITY_RANK.get(severity, 0) >= threshold


def record_event(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
    """Receiver of every taskqueue signal: keep the event for the stream if severe enough."""
    threshold = stream_threshold()
    if threshold is None or SEVERITY_RANK.get(event.severity, 0) < threshold:
        return
    event_buffer.add(event)


def flush() -> int:
    """Write this process's buffered events (a worker duty, and at worker exit)."""
    return event_buffer.flush()


def record_started(task: Any, worker_id: str) -> None:
    """Record a task's start for the stream from the worker that hands it to a handler
    process (that process records nothing at once: an insert and a commit per task there
    would cost more than the task)."""
    threshold = stream_threshold()
    if threshold is None or threshold > SEVERITY_RANK[Severity.INFO]:
        return
    event_buffer.add(
        TaskEvent(
            name="started",
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            worker_id=worker_id,
        )
    )


def in_handler_process() -> None:
    """Set up a worker's handler process: its own starts are recorded by the worker, and
    anything else it records waits for ``flush_after_task``."""
    event_buffer.start_buffering(skip=frozenset({"started"}))


def flush_after_task() -> None:
    """In a handler process, after each task: write what its handler set off (an enqueue,
    a cancel), if anything; never let the stream disturb the next task."""
    try:
        event_buffer.flush()
    except DatabaseError:
        logger.warning("could not record the events of a handler process", exc_info=True)


# --- serving -----------------------------------------------------------------------------


class BadRequest(ValueError):
    pass


def _event_id(value: str, where: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{where} must be an event id (an integer), got {value!r}") from None
    if number < 0:
        raise BadRequest(f"{where} must be an event id (an integer >= 0), got {value!r}")
    return number


def _start_after(request: HttpRequest) -> int:
    """The id after which to stream: Last-Event-ID (a reconnect), ?since=, or the newest."""

    last = request.headers.get("Last-Event-ID")
    if last:
        return _event_id(last.strip(), "Last-Event-ID")
    since = request.GET.get("since")
    if since is not None:
        return _event_id(since.strip(), "since")
    newest = (
        EventRecord.objects.using(database_alias())
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )
    return newest or 0


def _severities(request: HttpRequest) -> list[str] | None:
    lowest = request.GET.get("severity")
    if lowest is None:
        return None
    if lowest not in SEVERITY_RANK:
        raise BadRequest(f"severity must be one of {', '.join(SEVERITY_RANK)}, got {lowest!r}")
    return [name for name, rank in SEVERITY_RANK.items() if rank >= SEVERITY_RANK[lowest]]


def format_event(row: Any) -> str:
    """One SSE message for an ``EventRecord``."""
    data = {
        "id": row.id,
        "event": row.name,
        "severity": row.severity,
        "time": row.time.isoformat(),
        "task_id": str(row.task_id) if row.task_id else None,
        "task_type": row.task_type,
        "queue": row.queue,
        "worker_id": row.worker_id,
        "message": row.message,
        **{key: value for key, value in row.data.items() if key != "traceback"},
    }
    # JSON on one line: a newline inside a data: field would split the message.
    payload = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))
    return f"id: {row.id}\nevent: {row.name}\ndata: {payload}\n\n"


def stream_events(
    after: int,
    severities: list[str] | None = None,
    task_type: str | None = None,
    *,
    max_duration: float | None = None,
) -> Iterator[str]:
    """The SSE body: every event recorded after id ``after``, as it arrives, until
    ``max_duration`` seconds have passed."""

    limit = MAX_DURATION if max_duration is None else max_duration
    yield f"retry: {RECONNECT_MS}\n\n"
    started = last_sent = time.monotonic()
    rows = EventRecord.objects.using(database_alias()).order_by("id")
    if severities is not None:
        rows = rows.filter(severity__in=severities)
    if task_type:
        rows = rows.filter(task_type=task_type)
    while True:
        batch = list(rows.filter(id__gt=after)[:BATCH])
        for row in batch:
            after = row.id
            yield format_event(row)
        now = time.monotonic()
        if batch:
            last_sent = now
        if now - started >= limit:
            yield ": the stream ends here; reconnect with Last-Event-ID to resume\n\n"
            return
        if now - last_sent >= HEARTBEAT_INTERVAL:
            last_sent = now
            yield ": keep-alive\n\n"
        if len(batch) < BATCH:
            # The pause between polls of a long-lived response; nothing signals new rows
            # across processes on SQLite, so polling is the portable way.
            time.sleep(min(POLL_INTERVAL, max(limit - (now - started), 0)))


def event_stream(request: HttpRequest) -> HttpResponse:
    """``GET events/``: Server-Sent Events of lifecycle events across every worker.

    Staff users or a monitoring token only, like the stats (401 anonymous, 403 non-staff).
    Query: ``since=<event id>`` (or the ``Last-Event-ID`` header) to resume after an event,
    ``severity=warning`` for that severity and above, ``task_type=<name>``.
    """

    if request.method != "GET":
        return JsonResponse(
            {"error": "method_not_allowed", "detail": "The event stream only answers GET."},
            status=405,
        )
    access = check_access(request)
    if access is not Access.GRANTED:
        return denied_response(access)
    try:
        after = _start_after(request)
        severities = _severities(request)
    except BadRequest as exc:
        return JsonResponse({"error": "bad_request", "detail": str(exc)}, status=400)
    response = StreamingHttpResponse(
        stream_events(after, severities, request.GET.get("task_type") or None),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
