"""Lifecycle events: each transition's signal fires once with its fields, in the worker and in
the web process; a raising receiver is harmless; the built-in log receiver's records."""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.db.models.functions import Now
from django.dispatch import Signal
from django.test import override_settings

import taskqueue
from taskqueue import signals, store
from taskqueue.builtins.prune import prune
from taskqueue.checks import check_settings
from taskqueue.events import Severity, TaskEvent, emit
from taskqueue.models import EventRecord, Task, TaskStatus, Worker
from taskqueue.monitoring.logging import EXTRA_FIELDS

pytestmark = pytest.mark.django_db(transaction=True)

ALL_SIGNALS = [value for value in vars(signals).values() if isinstance(value, Signal)]


@pytest.fixture
def captured() -> Iterator[list[TaskEvent]]:
    """Every event this process sends while the test runs."""
    events: list[TaskEvent] = []

    def receiver(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
        events.append(event)

    for signal in ALL_SIGNALS:
        signal.connect(receiver, weak=False, dispatch_uid="tests.test_events.captured")
    yield events
    for signal in ALL_SIGNALS:
        signal.disconnect(dispatch_uid="tests.test_events.captured")


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def names_for(events: list[dict[str, Any]], task_id: uuid.UUID) -> Counter[str]:
    return Counter(e["name"] for e in events if e["task_id"] == str(task_id))


def one(events: list[dict[str, Any]], task_id: uuid.UUID, name: str) -> dict[str, Any]:
    matching = [e for e in events if e["task_id"] == str(task_id) and e["name"] == name]
    assert len(matching) == 1, (name, matching)
    return matching[0]


# --- in a real worker ------------------------------------------------------------------------


def test_a_worker_sends_each_transition_once_with_its_fields(
    run_worker: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("TASKQUEUE_TEST_EVENTS_FILE", str(path))
    ok = taskqueue.enqueue("events_ok", {"n": 1})
    failing = taskqueue.enqueue("events_fail", {"message": "no such key"})
    slow = taskqueue.enqueue("events_slow", {"seconds": 30})

    run_worker("--burst", "--queues", "events", "--id", "events-worker", "--concurrency", "3")
    events = read_events(path)

    worker_events = [e for e in events if e["name"] in ("worker_started", "worker_stopped")]
    assert [(e["name"], e["worker_id"]) for e in worker_events] == [
        ("worker_started", "events-worker"),
        ("worker_stopped", "events-worker"),
    ]
    worker_pid = worker_events[0]["pid"]
    assert "serving queues events with concurrency 3" in worker_events[0]["message"]

    assert names_for(events, ok.id) == {"started": 1, "succeeded": 1}
    started = one(events, ok.id, "started")
    # Sent by the handler process, not the worker's main process.
    assert started["pid"] != worker_pid
    succeeded = one(events, ok.id, "succeeded")
    assert succeeded["pid"] == worker_pid
    for event in (started, succeeded):
        assert (event["severity"], event["task_type"], event["queue"]) == (
            "info",
            "events_ok",
            "events",
        )
        assert (event["attempt"], event["max_attempts"], event["worker_id"]) == (
            1,
            3,
            "events-worker",
        )
        assert datetime.fromisoformat(event["time"]).utcoffset() == timedelta(0)
    assert succeeded["duration"] is not None and 0 <= succeeded["duration"] < 30
    assert succeeded["error_type"] == succeeded["traceback"] == ""

    # Two attempts: failed, retry scheduled, failed, dead-lettered.
    assert names_for(events, failing.id) == {
        "started": 2,
        "failed": 2,
        "retry_scheduled": 1,
        "dead_lettered": 1,
    }
    failures = [e for e in events if e["task_id"] == str(failing.id) and e["name"] == "failed"]
    assert sorted(e["attempt"] for e in failures) == [1, 2]
    for event in failures:
        assert (event["severity"], event["error_type"], event["max_attempts"]) == (
            "warning",
            "KeyError",
            2,
        )
        assert "no such key" in event["message"]
        assert "KeyError" in event["traceback"]
        assert event["duration"] is not None
    retry = one(events, failing.id, "retry_scheduled")
    assert (retry["severity"], retry["attempt"], retry["error_type"]) == ("warning", 1, "KeyError")
    assert retry["message"].startswith("retrying in 0.0 s:")
    dead = one(events, failing.id, "dead_lettered")
    assert (dead["severity"], dead["attempt"], dead["max_attempts"]) == ("error", 2, 2)
    assert "KeyError" in dead["traceback"]

    # Killed at its 1 s timeout: a failed attempt that timed out, then dead (1 attempt).
    assert names_for(events, slow.id) == {
        "started": 1,
        "failed": 1,
        "timed_out": 1,
        "dead_lettered": 1,
    }
    timed_out = one(events, slow.id, "timed_out")
    assert (timed_out["severity"], timed_out["error_type"]) == ("warning", "TimeoutError")
    assert 0.9 <= timed_out["duration"] < 30
    assert "timed out after 1 s" in timed_out["message"]

    statuses = dict(Task.objects.values_list("id", "status"))
    assert (statuses[ok.id], statuses[failing.id], statuses[slow.id]) == (
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.FAILED,
    )


def test_a_raising_receiver_never_disturbs_the_worker(
    run_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKQUEUE_TEST_RAISING_RECEIVER", "1")
    done = [taskqueue.enqueue("events_ok", {"n": n}) for n in range(3)]
    failing = taskqueue.enqueue("events_fail")

    result = run_worker("--burst", "--queues", "events", "--pool", "threads")

    statuses = dict(Task.objects.values_list("id", "status"))
    assert [statuses[task.id] for task in done] == [TaskStatus.COMPLETED] * 3
    assert statuses[failing.id] == TaskStatus.FAILED
    # Each failure is logged, with the receiver and the event named.
    assert "taskqueue signal receiver" in result.stderr
    assert "receiver failure on succeeded" in result.stderr
    assert "receiver failure on dead_lettered" in result.stderr
    assert "receiver failure on worker_stopped" in result.stderr


def test_a_raising_receiver_in_the_web_process_is_logged_and_harmless(
    captured: list[TaskEvent], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
        raise RuntimeError("dashboard down")

    signals.task_enqueued.connect(broken)
    signals.task_cancelled.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, "taskqueue.events"):
            task = taskqueue.enqueue("noop")
            assert taskqueue.cancel(task) is True
    finally:
        signals.task_enqueued.disconnect(broken)
        signals.task_cancelled.disconnect(broken)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED
    assert [e.name for e in captured] == ["enqueued", "cancelled"]
    failures = [r for r in caplog.records if r.name == "taskqueue.events"]
    assert len(failures) == 2
    assert failures[0].exc_info is not None and "dashboard down" in str(failures[0].exc_info[1])
    assert failures[0].task_id == str(task.id)


# --- in the web process ----------------------------------------------------------------------


def test_enqueue_paths_announce_each_new_task_once(captured: list[TaskEvent]) -> None:
    single = taskqueue.enqueue("noop", queue="default", idempotency_key="k1")
    assert taskqueue.enqueue("noop", idempotency_key="k1").id == single.id  # not a new task
    many = taskqueue.enqueue_many([("noop", {}), ("echo", {"value": 1})])
    with pytest.raises(RuntimeError), transaction.atomic():
        taskqueue.enqueue("noop")
        raise RuntimeError("rolled back")
    run = taskqueue.chain(taskqueue.step("noop"), taskqueue.step("echo")).enqueue()

    enqueued = [e for e in captured if e.name == "enqueued"]
    expected = [single.id, *(t.id for t in many), *(t.id for t in run.tasks)]
    assert [e.task_id for e in enqueued] == expected
    first = enqueued[0]
    assert (first.severity, first.task_type, first.queue, first.attempt, first.max_attempts) == (
        Severity.INFO,
        "noop",
        "default",
        0,
        3,
    )
    assert first.time.tzinfo is UTC


def test_cancel_paths_announce_once_with_the_tasks_context(captured: list[TaskEvent]) -> None:
    upstream = taskqueue.enqueue("noop", delay=timedelta(hours=1), queue="default")
    dependent = taskqueue.enqueue("echo", depends_on=[upstream])
    kept = taskqueue.enqueue("noop")
    with pytest.raises(RuntimeError), transaction.atomic():
        assert taskqueue.cancel(kept) is True
        raise RuntimeError("rolled back")
    captured.clear()

    assert taskqueue.cancel(upstream, reason="not needed") is True

    assert sorted((e.name, e.task_id) for e in captured) == sorted(
        [("cancelled", upstream.id), ("cancelled", dependent.id)]
    )
    event = next(e for e in captured if e.task_id == upstream.id)
    assert (event.severity, event.task_type, event.queue, event.message) == (
        Severity.INFO,
        "noop",
        "default",
        "not needed",
    )
    assert event.max_attempts == 3
    cascade = next(e for e in captured if e.task_id == dependent.id)
    assert cascade.task_type == "echo"
    assert str(upstream.id) in cascade.message
    assert Task.objects.get(pk=kept.pk).status == TaskStatus.PENDING


def test_rescue_announces_after_commit_with_the_lost_worker(captured: list[TaskEvent]) -> None:
    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    task = taskqueue.enqueue("add", {"a": 1, "b": 2})
    store.claim_due_tasks("silent", ["default"], 1)
    captured.clear()

    store.rescue_stale_tasks(60, "rescuer", random.Random(0))

    assert [e.name for e in captured] == ["failed", "retry_scheduled"]
    for event in captured:
        assert (event.task_id, event.task_type, event.worker_id, event.error_type) == (
            task.id,
            "add",
            "silent",
            "WorkerLost",
        )
        assert (event.attempt, event.severity) == (1, Severity.WARNING)
        assert "rescued by rescuer" in event.message


# --- the built-in log receiver ---------------------------------------------------------------


def lifecycle_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "taskqueue.lifecycle"]


def test_the_log_receiver_writes_one_record_per_event_with_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = uuid.uuid4()
    with caplog.at_level(logging.INFO, "taskqueue.lifecycle"):
        emit(signals.task_started, name="started", task_id=task_id, task_type="noop")
        emit(
            signals.task_dead_lettered,
            name="dead_lettered",
            severity=Severity.ERROR,
            task_id=task_id,
            task_type="noop",
            queue="emails",
            attempt=3,
            max_attempts=3,
            duration=1.2345,
            message="boom",
            error_type="ValueError",
            traceback="Traceback ...",
            worker_id="w1",
        )
        emit(signals.circuit_opened, name="circuit_opened", severity=Severity.WARNING)

    started, dead, circuit = lifecycle_records(caplog)
    assert [r.levelno for r in (started, dead, circuit)] == [
        logging.INFO,
        logging.ERROR,
        logging.WARNING,
    ]
    assert {field: getattr(dead, field) for field in EXTRA_FIELDS} == {
        "event": "dead_lettered",
        "severity": "error",
        "task_id": str(task_id),
        "task_type": "noop",
        "queue": "emails",
        "attempt": 3,
        "max_attempts": 3,
        "duration_ms": 1234,
        "error_type": "ValueError",
        "worker_id": "w1",
        "traceback": "Traceback ...",
    }
    assert dead.getMessage() == (
        f"dead lettered task {task_id} (noop) attempt 3/3 in 1234 ms: boom"
    )
    assert (started.event, started.queue, started.duration_ms) == ("started", None, None)
    assert "Traceback" not in started.getMessage()


def test_the_log_receiver_follows_the_logger_level_and_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "taskqueue.lifecycle"):
        emit(signals.task_succeeded, name="succeeded", task_type="noop")
        emit(signals.task_failed, name="failed", severity=Severity.WARNING, task_type="noop")
    assert [r.event for r in lifecycle_records(caplog)] == ["failed"]
    caplog.clear()
    with (
        override_settings(TASKQUEUE={"EVENTS": {"LOG": False}}),
        caplog.at_level(logging.INFO, "taskqueue.lifecycle"),
    ):
        emit(signals.task_failed, name="failed", severity=Severity.WARNING, task_type="noop")
    assert lifecycle_records(caplog) == []
    with caplog.at_level(logging.INFO, "taskqueue.lifecycle"):
        emit(signals.task_failed, name="failed", severity=Severity.WARNING, task_type="noop")
    assert len(lifecycle_records(caplog)) == 1  # the setting is read again once restored


# --- settings and retention ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ({"LOG": "yes"}, "TASKQUEUE['EVENTS']['LOG'] must be True or False, got 'yes'."),
        ({"STREAM": "debug"}, "TASKQUEUE['EVENTS']['STREAM'] must be the lowest severity"),
        ({"KEEP": 0}, "TASKQUEUE['EVENTS']['KEEP'] must be a positive number of seconds, got 0."),
        ({"SHOW": 1}, "Unknown key 'SHOW' in TASKQUEUE['EVENTS']."),
    ],
)
def test_events_settings_are_checked(events: dict[str, Any], problem: str) -> None:
    with override_settings(TASKQUEUE={"EVENTS": events}):
        messages = [m.msg for m in check_settings()]
    assert any(problem in m for m in messages), messages


def test_events_settings_accept_none_and_every_severity() -> None:
    for stream in (None, "info", "warning", "error"):
        with override_settings(TASKQUEUE={"EVENTS": {"STREAM": stream, "LOG": False}}):
            assert [m.msg for m in check_settings() if "EVENTS" in m.msg] == []


def test_retention_prunes_events_older_than_keep() -> None:
    old = EventRecord.objects.create(name="failed", severity="warning")
    recent = EventRecord.objects.create(name="failed", severity="warning")
    EventRecord.objects.filter(pk=old.pk).update(time=Now() - timedelta(hours=2))
    with override_settings(TASKQUEUE={"EVENTS": {"KEEP": 3600}}):
        assert prune().counts["events"] == 1
    assert list(EventRecord.objects.values_list("pk", flat=True)) == [recent.pk]
