"""Schedules firing: slots, catch-up, the lost race, run-now, the dead-man's switch, and real
workers (exactly one task per slot with three of them; heartbeat pings).

Firing and lateness take ``now`` as an argument, so the in-process tests are exact; the
worker tests use the database clock like production.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import pytest
from django.db import connection

from taskqueue import signals, store
from taskqueue.events import TaskEvent
from taskqueue.models import Schedule, ScheduleSource, Task, TaskStatus
from taskqueue.schedules import fire_due_schedules, late_schedules, report_late_schedules, run_now
from taskqueue.store import firing, sql
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


def make(name: str = "every-minute", cron: str = "* * * * *", **fields: Any) -> Schedule:
    fields.setdefault("task_type", "schedule_tick")
    fields.setdefault("next_run_at", T0)
    return Schedule.objects.create(name=name, cron=cron, **fields)


def fired_slots(schedule: Schedule) -> list[datetime]:
    return list(
        Task.objects.filter(schedule=schedule)
        .order_by("schedule_slot")
        .values_list("schedule_slot", flat=True)
    )


@pytest.fixture(autouse=True)
def fresh_log_once() -> Iterator[None]:
    # "Logged once per process" must not carry over between tests.
    firing._reported.clear()
    yield
    firing._reported.clear()


# --- firing ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_due_slot_fires_once_and_the_next_run_advances() -> None:
    schedule = make(payload={"label": "x"}, queue="reports", priority=50)
    assert fire_due_schedules(now=T0 + 2 * SECOND) == 1
    assert fire_due_schedules(now=T0 + 3 * SECOND) == 0  # not due again until T0 + 1 min
    (task,) = Task.objects.filter(schedule=schedule)
    assert (task.schedule_slot, task.run_at, task.status) == (T0, T0, TaskStatus.PENDING)
    assert (task.payload, task.queue, task.priority) == ({"label": "x"}, "reports", 50)
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + MINUTE
    assert (schedule.last_slot, schedule.last_task_id) == (T0, task.id)
    assert schedule.last_fired_at == T0 + 2 * SECOND
    assert fire_due_schedules(now=T0 + MINUTE) == 1
    assert fired_slots(schedule) == [T0, T0 + MINUTE]


@pytest.mark.django_db
def test_slots_due_within_the_tolerance_all_fire_whatever_catch_up_says() -> None:
    schedule = make(cron="* * * * * *", catch_up="skip")
    assert fire_due_schedules(now=T0 + 4 * SECOND) == 5
    assert fired_slots(schedule) == [T0 + n * SECOND for n in range(5)]
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + 5 * SECOND


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("catch_up", "now", "expected"),
    [
        # An hour down: one task for the latest missed slot.
        ("once", T0 + timedelta(hours=1, seconds=30), [T0 + timedelta(hours=1)]),
        # Back just after a slot: that slot fires as usual, and is the one catch-up run.
        ("once", T0 + timedelta(hours=1, seconds=3), [T0 + timedelta(hours=1)]),
        ("all", T0 + timedelta(minutes=10, seconds=30), [T0 + n * MINUTE for n in range(11)]),
        ("skip", T0 + timedelta(hours=1, seconds=30), []),
        ("skip", T0 + timedelta(hours=1, seconds=3), [T0 + timedelta(hours=1)]),
    ],
)
def test_catch_up_after_downtime(catch_up: str, now: datetime, expected: list[datetime]) -> None:
    schedule = make(catch_up=catch_up)
    assert fire_due_schedules(now=now) == len(expected)
    assert fired_slots(schedule) == expected
    schedule.refresh_from_db()
    assert schedule.next_run_at == now.replace(second=0) + MINUTE
    assert fire_due_schedules(now=now) == 0


@pytest.mark.django_db
def test_catch_up_all_is_capped_at_the_latest_slots(monkeypatch, caplog) -> None:
    monkeypatch.setattr(firing, "MAX_CATCH_UP", 5)
    schedule = make(catch_up="all")
    with caplog.at_level("WARNING", "taskqueue"):
        assert fire_due_schedules(now=T0 + timedelta(hours=1, seconds=30)) == 5
    assert fired_slots(schedule) == [T0 + n * MINUTE for n in range(56, 61)]
    assert "missed more than 5 slots" in caplog.text


@pytest.mark.django_db
def test_a_worker_that_lost_the_race_inserts_nothing_and_logs_nothing(caplog) -> None:
    schedule = make()
    stale = Schedule.objects.get(pk=schedule.pk)  # what a second worker read
    assert fire_due_schedules(now=T0 + SECOND) == 1
    with caplog.at_level("DEBUG"):
        assert firing._fire(stale, T0 + SECOND, connection.alias) == 0
    assert caplog.records == []
    assert fired_slots(schedule) == [T0]


@pytest.mark.django_db
def test_paused_unregistered_and_unbuildable_schedules_do_not_fire(caplog) -> None:
    make("paused", enabled=False)
    make("elsewhere", task_type="served-by-another-worker")
    broken = make("broken", payload={"nope": 1})
    with caplog.at_level("INFO", "taskqueue"):
        assert fire_due_schedules(now=T0 + SECOND) == 0
        assert fire_due_schedules(now=T0 + 2 * SECOND) == 0
    assert Task.objects.count() == 0
    assert caplog.text.count("'served-by-another-worker' is not registered in this worker") == 1
    assert caplog.text.count("schedule 'broken' cannot fire: payload does not match") == 1
    broken.refresh_from_db()
    assert broken.next_run_at == T0  # left due: the dead-man's switch will report it


@pytest.mark.django_db
def test_a_schedule_without_next_run_starts_at_its_next_slot() -> None:
    schedule = make(next_run_at=None)
    assert fire_due_schedules(now=T0 + SECOND) == 0
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + MINUTE


@pytest.mark.django_db
def test_run_now_enqueues_one_task_outside_the_slots() -> None:
    schedule = make(payload={"label": "now"})
    task = run_now(schedule)
    assert (task.schedule_id, task.schedule_slot, task.payload) == (
        schedule.pk,
        None,
        {"label": "now"},
    )
    schedule.refresh_from_db()
    assert schedule.last_task_id == task.id
    assert schedule.next_run_at == T0  # the slots are not affected


# --- the dead-man's switch ------------------------------------------------------------------


@pytest.fixture
def late_events() -> Iterator[list[TaskEvent]]:
    events: list[TaskEvent] = []

    def receive(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
        events.append(event)

    signals.schedule_late.connect(receive)
    yield events
    signals.schedule_late.disconnect(receive)


def complete_schedule_tasks() -> None:
    """Claim and complete every due task, as a worker does (the success path of the store)."""
    claimed = store.claim_due_tasks("test-worker", ["default"], 100)
    store.complete_tasks([(task, None) for task in claimed])


@pytest.mark.django_db
def test_late_schedule_is_reported_once_per_episode(late_events: list[TaskEvent], caplog) -> None:
    schedule = make(grace=60)
    make("paused", enabled=False, grace=60)
    now = sql.db_now(connection.alias)
    assert late_schedules(now) == []
    later = now + timedelta(hours=1)
    (late,) = late_schedules(later)
    assert late.name == "every-minute"
    assert late.late_by > 3000
    assert late.due_at < later

    with caplog.at_level("WARNING", "taskqueue"):
        assert [item.name for item in report_late_schedules(later)] == ["every-minute"]
        assert report_late_schedules(later + MINUTE) == []  # the same episode
    assert len(late_events) == 1
    event = late_events[0]
    assert (event.name, event.severity, event.task_type) == (
        "schedule_late",
        "warning",
        "schedule_tick",
    )
    assert event.extra["schedule"] == "every-minute"
    assert caplog.text.count("schedule 'every-minute' is late") == 1
    schedule.refresh_from_db()
    assert schedule.late_since == later

    # A success ends the episode.
    run_now(schedule)
    complete_schedule_tasks()
    schedule.refresh_from_db()
    assert schedule.late_since is None
    assert schedule.last_success_at is not None
    success = sql.db_now(connection.alias)
    assert late_schedules(success + SECOND) == []
    # The next lapse is a new episode.
    report_late_schedules(success + timedelta(hours=2))
    assert len(late_events) == 2


@pytest.mark.django_db
def test_pausing_ends_an_episode_and_paused_schedules_are_never_late() -> None:
    schedule = make(grace=1)
    later = sql.db_now(connection.alias) + timedelta(hours=1)
    assert len(report_late_schedules(later)) == 1
    assert firing.pause_schedules([schedule.pk]) == 1
    assert late_schedules(later) == []
    schedule.refresh_from_db()
    assert schedule.late_since is None
    # Resumed, it is judged from the resume on, and its next run is the next slot.
    assert firing.resume_schedules([schedule.pk]) == 1
    schedule.refresh_from_db()
    now = sql.db_now(connection.alias)
    assert now < schedule.next_run_at <= now + MINUTE
    assert late_schedules(now + SECOND) == []


@pytest.mark.django_db
def test_schedule_grace_setting_is_the_default(settings) -> None:
    make()
    now = sql.db_now(connection.alias)
    settings.TASKQUEUE = {**settings.TASKQUEUE, "SCHEDULE_GRACE": 3600}
    assert late_schedules(now + timedelta(minutes=30)) == []
    assert len(late_schedules(now + timedelta(minutes=62))) == 1


# --- real workers ---------------------------------------------------------------------------


class _Monitor(BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def monitor() -> Iterator[tuple[str, list[str]]]:
    """A local heartbeat monitor: its base URL and the paths it was asked for."""
    hits: list[str] = []
    handler = type("Monitor", (_Monitor,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.mark.django_db(transaction=True)
def test_a_success_pings_the_heartbeat_url(start_worker, monitor) -> None:
    base, hits = monitor
    good = make("monitored", heartbeat_url=f"{base}/ping/abc", next_run_at=T0 + timedelta(days=1))
    dead = make("dead-monitor", heartbeat_url="http://127.0.0.1:9/ping", next_run_at=None)
    tasks = [run_now(good), run_now(dead)]
    # The monitor is on loopback: allowed through settings (see tests/outbound_settings.py).
    local_monitor = {
        "DJANGO_SETTINGS_MODULE": "tests.outbound_settings",
        "TASKQUEUE_TEST_HEARTBEAT_HOSTS": "127.0.0.1",
        "TASKQUEUE_TEST_ALLOW_PRIVATE": "1",
    }
    code, _, stderr = finish_worker(start_worker("--burst", extra_env=local_monitor), timeout=90)
    assert code == 0, stderr
    assert (
        Task.objects.filter(id__in=[t.id for t in tasks], status=TaskStatus.COMPLETED).count() == 2
    )
    wait_for(lambda: "/ping/abc" in hits, timeout=10, message="the heartbeat ping")
    assert hits == ["/ping/abc"]
    good.refresh_from_db()
    assert good.last_success_at is not None
    # A monitor that does not answer is logged (by host: the path may be a secret), and
    # disturbs nothing else.
    assert "heartbeat ping to 127.0.0.1:9 failed" in stderr
    assert "/ping" not in stderr


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_workers_fire_each_slot_of_a_per_second_schedule_exactly_once(start_worker) -> None:
    # The test app declares "test-every-second" with @periodic when this variable is set.
    env = {"TASKQUEUE_TEST_PERIODIC": "1"}
    workers = [start_worker(extra_env=env) for _ in range(3)]
    with worker_stderr_on_failure(*workers):
        schedule = wait_for(
            lambda: Schedule.objects.filter(name="test-every-second").first(),
            timeout=30,
            message="the workers to sync the declared schedule",
        )
        assert schedule.source == ScheduleSource.CODE
        wait_for(
            lambda: Task.objects.filter(schedule=schedule).count() >= 21,
            timeout=60,
            message="21 slots to fire",
        )
        for process in workers:
            process.terminate()
        outputs = [finish_worker(process, timeout=30) for process in workers]
    for code, _, stderr in outputs:
        assert code == 0, stderr
        # Losers of each race neither insert nor log: no IntegrityError, no traceback.
        for noise in ("IntegrityError", "Traceback", "ERROR", "cannot fire", "duty"):
            assert noise not in stderr, stderr
    slots = fired_slots(schedule)
    assert len(slots) == len(set(slots)) >= 21
    gaps = [(a, b) for a, b in pairwise(slots) if b - a != SECOND]
    assert gaps == [], f"slots missing or out of step: {gaps}"
    assert all(slot.microsecond == 0 for slot in slots)
    payloads = Task.objects.filter(schedule=schedule).values_list("payload", flat=True)
    assert all(payload == {"label": "tick"} for payload in payloads)
    schedule.refresh_from_db()
    assert schedule.last_success_at is not None
