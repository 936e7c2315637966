"""The live event stream: recording events in EventRecord (at once, or buffered in a worker),
and the SSE view: permissions, resuming, filters, heartbeats, and events from a worker."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse

import taskqueue
from taskqueue import signals, store
from taskqueue.events import Severity, TaskEvent, emit
from taskqueue.models import EventRecord
from taskqueue.monitoring import stream
from tests.conftest import finish_worker, worker_stderr_on_failure
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/taskqueue/events/"


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True))
    return client


@pytest.fixture
def short_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams that end after a second, with frequent heartbeats, so tests never hang."""
    monkeypatch.setattr(stream, "MAX_DURATION", 1.0)
    monkeypatch.setattr(stream, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(stream, "POLL_INTERVAL", 0.05)


def body(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def messages(text: str) -> list[dict[str, str]]:
    """The SSE messages (fields by name) of a stream body; comments and retry left out."""
    parsed = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            parsed.append(fields)
    return parsed


def record(name: str = "failed", severity: str = Severity.WARNING, **fields: Any) -> int:
    """Emit an event in this (web) process, written at once; return its row's id."""
    signal_ = getattr(signals, f"task_{name}", None) or getattr(signals, name)
    before = EventRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0
    emit(signal_, name=name, severity=severity, **fields)
    return EventRecord.objects.filter(id__gt=before).values_list("id", flat=True).get()


# --- permissions and bad requests ------------------------------------------------------------


def test_only_staff_or_a_token_may_watch() -> None:
    assert reverse("taskqueue:events") == URL
    anonymous = Client().get(URL)
    assert anonymous.status_code == 401
    assert anonymous["Content-Type"] == "application/json"

    member = Client()
    member.force_login(UserFactory(is_staff=False))
    assert member.get(URL).status_code == 403

    staff = Client()
    staff.force_login(UserFactory(is_staff=True))
    response = staff.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    response.close()

    with override_settings(TASKQUEUE={"MONITORING_TOKENS": ["s3cret"]}):
        assert Client().get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        response = Client().get(URL, HTTP_AUTHORIZATION="Bearer s3cret")
        assert response.status_code == 200
        response.close()
    assert staff.post(URL).status_code == 405


@pytest.mark.parametrize(
    ("query", "headers", "problem"),
    [
        ({"since": "yesterday"}, {}, "since must be an event id (an integer), got 'yesterday'"),
        ({}, {"HTTP_LAST_EVENT_ID": "-3"}, "Last-Event-ID must be an event id (an integer >= 0)"),
        ({"severity": "debug"}, {}, "severity must be one of info, warning, error, got 'debug'"),
    ],
)
def test_bad_positions_and_filters_are_refused_by_name(
    staff_client: Client, query: dict[str, str], headers: dict[str, str], problem: str
) -> None:
    response = staff_client.get(URL, query, **headers)
    assert response.status_code == 400
    assert problem in response.json()["detail"]


# --- recording -------------------------------------------------------------------------------


def test_events_at_or_above_the_stream_severity_are_recorded_at_once() -> None:
    task_id = uuid.uuid4()
    emit(signals.task_succeeded, name="succeeded", task_id=task_id)  # info: under "warning"
    assert not EventRecord.objects.exists()
    emit(
        signals.task_dead_lettered,
        name="dead_lettered",
        severity=Severity.ERROR,
        task_id=task_id,
        task_type="noop",
        queue="default",
        attempt=3,
        max_attempts=3,
        duration=0.25,
        message="boom",
        error_type="ValueError",
        traceback="Traceback (most recent call last): secret details",
        worker_id="w1",
        extra={"when": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    row = EventRecord.objects.get()
    assert (row.name, row.severity, row.task_id, row.task_type, row.queue, row.worker_id) == (
        "dead_lettered",
        "error",
        task_id,
        "noop",
        "default",
        "w1",
    )
    assert row.message == "boom"
    assert row.data["attempt"] == 3 and row.data["duration"] == 0.25
    assert row.data["error_type"] == "ValueError"
    assert row.data["extra"] == {"when": "2026-01-01T00:00:00Z"}
    assert "secret details" not in json.dumps(row.data)

    with override_settings(TASKQUEUE={"EVENTS": {"STREAM": None}}):
        emit(signals.task_failed, name="failed", severity=Severity.ERROR)
    with override_settings(TASKQUEUE={"EVENTS": {"STREAM": "info"}}):
        emit(signals.task_started, name="started", task_id=task_id)
    assert list(EventRecord.objects.order_by("id").values_list("name", flat=True)) == [
        "dead_lettered",
        "started",
    ]


def test_a_buffering_recorder_writes_only_when_flushed() -> None:
    recorder = stream.EventBuffer()
    recorder.start_buffering()
    for n in range(3):
        recorder.add(TaskEvent(name="failed", severity=Severity.WARNING, message=f"m{n}"))
    assert not EventRecord.objects.exists()
    assert recorder.flush() == 3
    assert list(EventRecord.objects.order_by("id").values_list("message", flat=True)) == [
        "m0",
        "m1",
        "m2",
    ]
    assert recorder.flush() == 0


# --- serving ---------------------------------------------------------------------------------


def test_a_stream_resumes_after_last_event_id_and_filters(
    staff_client: Client, short_streams: None
) -> None:
    first = record(task_type="noop")
    second = record("dead_lettered", Severity.ERROR, task_type="echo")
    third = record(task_type="echo")

    def ids(**kwargs: Any) -> list[int]:
        response = staff_client.get(URL, **kwargs)
        assert response.status_code == 200
        return [int(message["id"]) for message in messages(body(response))]

    assert ids(HTTP_LAST_EVENT_ID=str(first)) == [second, third]
    assert ids(data={"since": str(second)}) == [third]
    assert ids(data={"since": "0"}) == [first, second, third]
    assert ids(data={"since": "0", "severity": "error"}) == [second]
    assert ids(data={"since": "0", "task_type": "echo"}) == [second, third]
    # Without a position, a new stream starts after the newest event.
    assert ids() == []


def test_a_stream_says_what_happened_heartbeats_and_ends(
    staff_client: Client, short_streams: None
) -> None:
    task_id = uuid.uuid4()
    event_id = record(
        "dead_lettered",
        Severity.ERROR,
        task_id=task_id,
        task_type="noop",
        queue="default",
        attempt=2,
        max_attempts=2,
        message='bad "quote"\nnext line',
        error_type="ValueError",
        traceback="Traceback: not for the stream",
    )
    text = body(staff_client.get(URL, {"since": "0"}))

    assert text.startswith("retry: 2000\n\n")
    (message,) = messages(text)
    assert (message["id"], message["event"]) == (str(event_id), "dead_lettered")
    data = json.loads(message["data"])
    assert data["task_id"] == str(task_id)
    assert (data["event"], data["severity"], data["task_type"], data["queue"]) == (
        "dead_lettered",
        "error",
        "noop",
        "default",
    )
    assert (data["attempt"], data["max_attempts"], data["error_type"]) == (2, 2, "ValueError")
    assert data["message"] == 'bad "quote"\nnext line'
    assert "traceback" not in data and "not for the stream" not in text
    assert ": keep-alive\n\n" in text
    assert text.endswith(": the stream ends here; reconnect with Last-Event-ID to resume\n\n")


def read_until(
    response: Any, found: Callable[[dict[str, str]], bool], timeout: float
) -> list[dict[str, str]]:
    """Read a live stream until a message satisfies ``found``; every message read so far."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, str]] = []
    buffer = ""
    for chunk in response.streaming_content:
        buffer += chunk.decode()
        *complete, buffer = buffer.split("\n\n")
        for message in messages("\n\n".join(complete) + "\n\n"):
            seen.append(message)
            if found(message):
                return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no matching event within {timeout} s; got {seen}")


def test_the_stream_delivers_events_from_a_worker_process(
    staff_client: Client,
    start_worker: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream, "MAX_DURATION", 60.0)
    monkeypatch.setattr(stream, "HEARTBEAT_INTERVAL", 0.5)
    response = staff_client.get(URL)
    assert response.status_code == 200
    worker = start_worker("--queues", "events", "--pool", "threads", "--id", "stream-worker")
    task = taskqueue.enqueue("events_fail", {"message": "lost key"})

    with worker_stderr_on_failure(worker):
        seen = read_until(
            response,
            lambda m: m["event"] == "dead_lettered" and str(task.id) in m["data"],
            timeout=30,
        )
    response.close()
    worker.send_signal(signal.SIGTERM)
    assert finish_worker(worker)[0] == 0

    mine = [json.loads(m["data"]) for m in seen if str(task.id) in m["data"]]
    # The default stream severity is "warning": starts and successes are not recorded.
    assert [(d["event"], d["attempt"]) for d in mine] == [
        ("failed", 1),
        ("retry_scheduled", 1),
        ("failed", 2),
        ("dead_lettered", 2),
    ]
    dead = mine[-1]
    assert (dead["severity"], dead["task_type"], dead["queue"], dead["worker_id"]) == (
        "error",
        "events_fail",
        "events",
        "stream-worker",
    )
    assert dead["error_type"] == "KeyError" and "lost key" in dead["message"]
    assert [int(m["id"]) for m in seen] == sorted(int(m["id"]) for m in seen)


def test_stream_events_generator_stops_at_its_duration(short_streams: None) -> None:
    started = time.monotonic()
    chunks: Iterator[str] = stream.stream_events(0, max_duration=0.3)
    text = "".join(chunks)
    assert 0.25 <= time.monotonic() - started < 5
    assert text.endswith("reconnect with Last-Event-ID to resume\n\n")


def test_a_process_pool_start_is_recorded_by_the_worker_not_the_handler_process() -> None:
    task = taskqueue.enqueue("noop")
    (claimed,) = store.claim_due_tasks("pool-worker", ["default"], 1)
    in_child = stream.EventBuffer()
    in_child.start_buffering(skip=frozenset({"started"}))
    in_child.add(TaskEvent(name="started", task_id=task.id))
    in_child.add(TaskEvent(name="enqueued", task_id=task.id))
    assert in_child.flush() == 1  # the enqueue its handler set off, not its own start

    stream.record_started(claimed, "pool-worker")  # default "warning": not recorded
    with override_settings(TASKQUEUE={"EVENTS": {"STREAM": "info"}}):
        stream.record_started(claimed, "pool-worker")
    started = EventRecord.objects.get(name="started")
    assert (started.task_id, started.task_type, started.worker_id) == (
        task.id,
        "noop",
        "pool-worker",
    )
    assert (started.data["attempt"], started.data["max_attempts"]) == (1, 3)
