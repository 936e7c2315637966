"""Stats: exact numbers after a known mix of tasks and outcomes, estimates at scale, the
oldest due task, the command's tables and JSON."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from taskqueue.models import (
    CircuitState,
    DeadLetter,
    MetricsMinute,
    MetricsTotal,
    Schedule,
    Task,
    TaskStatus,
    TaskType,
    Worker,
    WorkerStatus,
)
from taskqueue.monitoring import metrics, queries, stats
from tests.factories import TaskFactory, database_now, past

pytestmark = pytest.mark.django_db

BUCKETS = len(metrics.TIME_BUCKETS) + 1


def live_worker(
    worker_id: str = "host:1:abc",
    *,
    task_types: list[str] | None = None,
    queues: list[str] | None = None,
    heartbeat_age: float = 0.5,
) -> Worker:
    return Worker.objects.create(
        id=worker_id,
        hostname="host",
        pid=1,
        queues=queues or ["default"],
        task_types=task_types if task_types is not None else ["noop"],
        concurrency=4,
        status=WorkerStatus.RUNNING,
        last_heartbeat=past(heartbeat_age),
    )


def dead_task(task_type: str = "noop", *, reviewed: bool = False) -> Task:
    task = TaskFactory(task_type=task_type, status=TaskStatus.FAILED, completed_at=past(5))
    DeadLetter.objects.create(task=task, task_type=task_type, error="boom", reviewed=reviewed)
    return task


def histogram(**buckets: int) -> list[int]:
    """A histogram with counts at bucket indexes given as b<index>=count."""
    counts = [0] * BUCKETS
    for name, count in buckets.items():
        counts[int(name[1:])] = count
    return counts


def minute_row(minutes_ago: int, task_type: str, queue: str = "default", **fields: Any) -> None:
    now = database_now().replace(second=0, microsecond=0)
    MetricsMinute.objects.create(
        minute=now - timedelta(minutes=minutes_ago),
        worker_id=fields.pop("worker_id", "host:1:abc"),
        task_type=task_type,
        queue=queue,
        run_histogram=fields.pop("run_histogram", [0] * BUCKETS),
        wait_histogram=fields.pop("wait_histogram", [0] * BUCKETS),
        **fields,
    )


def known_mix() -> dict[str, Any]:
    """3 pending (one 100 s overdue), 2 scheduled in the future, 1 retrying due, 1 waiting,
    2 running held by a live worker, 4 completed, 2 failed (one reviewed), 1 cancelled."""
    TaskFactory.create_batch(2, task_type="noop", run_at=past(10))
    oldest = TaskFactory(task_type="noop", run_at=past(100), priority=-50)
    TaskFactory.create_batch(
        2,
        task_type="email",
        queue="emails",
        status=TaskStatus.SCHEDULED,
        run_at=past(-3600),
    )
    TaskFactory(task_type="email", queue="emails", status=TaskStatus.RETRYING, run_at=past(30))
    TaskFactory(task_type="noop", status=TaskStatus.WAITING)
    worker = live_worker(task_types=["noop", "email"], queues=["default", "emails"])
    TaskFactory.create_batch(
        2,
        task_type="noop",
        status=TaskStatus.RUNNING,
        claimed_by=worker.id,
        started_at=past(1),
    )
    TaskFactory.create_batch(4, task_type="noop", status=TaskStatus.COMPLETED, completed_at=past(5))
    dead_task()
    dead_task(reviewed=True)
    TaskFactory(task_type="email", queue="emails", status=TaskStatus.CANCELLED)
    return {"oldest": oldest, "worker": worker}


def test_counts_are_exact_after_a_known_mix() -> None:
    mix = known_mix()
    data = stats.collect()
    assert data["counts"] == {
        "total": 16,
        "pending": 3,
        "scheduled": 2,
        "waiting": 1,
        "running": 2,
        "retrying": 1,
        "completed": 4,
        "failed": 2,
        "cancelled": 1,
    }
    assert data["due"] == 4  # 3 pending + the retrying task past its backoff
    assert data["oldest_pending_age"] == pytest.approx(100, abs=5)
    emails = data["by_queue"]["emails"]
    assert (emails["scheduled"], emails["retrying"], emails["due"]) == (2, 1, 1)
    assert emails["oldest_pending_age"] == pytest.approx(30, abs=5)
    default = data["by_queue"]["default"]
    assert (default["pending"], default["waiting"], default["running"], default["due"]) == (
        3,
        1,
        2,
        3,
    )
    noop = data["by_type"]["noop"]
    assert (noop["pending"], noop["running"], noop["completed"], noop["failed"]) == (3, 2, 4, 2)
    assert noop["total"] == 12 and noop["due"] == 3 and not noop["approximate"]
    assert data["by_type"]["email"]["cancelled"] == 1
    assert data["dead_letters"] == {"unreviewed": 1}
    assert data["workers"]["live"] == 1
    [worker] = data["workers"]["list"]
    assert worker["id"] == mix["worker"].id
    assert worker["tasks_in_hand"] == 2
    assert worker["queues"] == ["default", "emails"] and worker["concurrency"] == 4
    assert data["open_circuits"] == [] and data["late_schedules"] == []
    # Nothing estimated on a small queue: only the percentile note.
    assert len(data["approximate"]) == 1 and "histogram" in data["approximate"][0]
    json.dumps(data)


def test_dead_workers_and_retried_dead_letters_are_not_counted() -> None:
    live_worker("host:2:old", heartbeat_age=60)  # STALE_AFTER is 3 s in the tests
    Worker.objects.create(
        id="host:3:stopped", hostname="host", pid=3, concurrency=1, status=WorkerStatus.STOPPED
    )
    task = dead_task()
    DeadLetter.objects.filter(task=task).update(resolved_at=past(1))
    data = stats.collect()
    assert data["workers"] == {"live": 0, "list": []}
    assert data["dead_letters"] == {"unreviewed": 0}


def test_rates_and_percentiles_come_from_the_window_of_metrics() -> None:
    minute_row(
        0,
        "noop",
        succeeded=6,
        failed=2,
        retried=1,
        dead_lettered=1,
        run_histogram=histogram(b4=4, b7=2),
        wait_histogram=histogram(b0=6),
        run_seconds=2.6,
        wait_seconds=0.01,
    )
    minute_row(
        5,
        "noop",
        worker_id="host:2:def",
        succeeded=2,
        run_histogram=histogram(b7=2),
        run_seconds=1.5,
    )
    minute_row(30, "email", "emails", succeeded=1, failed=3, retried=3)
    minute_row(90, "noop", succeeded=1000)  # outside the default one-hour window

    data = stats.collect()
    assert data["throughput"]["completed_last_hour"] == 9
    assert data["throughput"]["failed_last_hour"] == 5
    assert len(data["throughput"]["per_minute"]) in (60, 61)
    assert sum(m["succeeded"] for m in data["throughput"]["per_minute"]) == 9
    overall = data["window_outcomes"]
    assert (overall["succeeded"], overall["failed"], overall["retried"]) == (9, 5, 4)
    assert overall["failure_rate"] == pytest.approx(5 / 14, abs=1e-4)
    assert overall["retry_rate"] == pytest.approx(4 / 14, abs=1e-4)
    noop = data["by_type"]["noop"]
    assert noop["window"]["failure_rate"] == pytest.approx(0.2)
    assert noop["window"]["retry_rate"] == pytest.approx(0.1)
    assert noop["window"]["dead_lettered"] == 1
    run = histogram(b4=4, b7=4)
    assert noop["run_time"]["p50"] == pytest.approx(metrics.percentile(run, 0.5), abs=1e-6)
    assert noop["run_time"]["p95"] == pytest.approx(metrics.percentile(run, 0.95), abs=1e-6)
    assert noop["run_time"]["p99"] == pytest.approx(metrics.percentile(run, 0.99), abs=1e-6)
    assert noop["run_time"]["count"] == 8
    assert noop["run_time"]["mean"] == pytest.approx(4.1 / 8)
    assert noop["wait_time"]["p99"] <= metrics.TIME_BUCKETS[0]
    assert data["by_type"]["email"]["run_time"]["p50"] is None
    assert data["by_queue"]["emails"]["window"]["retry_rate"] == pytest.approx(0.75)

    assert noop["since_start"] is None
    MetricsTotal.objects.create(task_type="noop", queue="default", succeeded=5000, failed=7)
    MetricsTotal.objects.create(task_type="noop", queue="other", succeeded=1, dead_lettered=2)
    since_start = stats.collect()["by_type"]["noop"]["since_start"]
    assert since_start["succeeded"] == 5001 and since_start["failed"] == 7
    assert since_start["dead_lettered"] == 2

    wider = stats.collect(window=2 * 3600)
    assert wider["window_outcomes"]["succeeded"] == 1009
    # The hourly throughput does not follow the window.
    assert wider["throughput"]["completed_last_hour"] == 9


def test_open_circuits_and_late_schedules_are_listed() -> None:
    TaskType.objects.create(
        name="flaky",
        circuit_state=CircuitState.OPEN,
        circuit_opened_at=past(5),
        consecutive_failures=5,
        circuit_cooldown=30,
    )
    TaskType.objects.create(name="fine")
    schedule = Schedule.objects.create(name="every-minute", task_type="noop", cron="* * * * *")
    Schedule.objects.filter(pk=schedule.pk).update(created_at=past(3600), updated_at=past(3600))
    data = stats.collect()
    [circuit] = data["open_circuits"]
    assert circuit["task_type"] == "flaky" and circuit["state"] == "open"
    assert circuit["consecutive_failures"] == 5
    [late] = data["late_schedules"]
    assert late["name"] == "every-minute" and late["late_by"] > 0


def test_oldest_due_task_is_found_across_priorities_and_ignores_future_ones() -> None:
    assert queries.oldest_due_at() is None
    TaskFactory(priority=100, run_at=past(10))
    low = TaskFactory(priority=-100, run_at=past(500), queue="slow")
    TaskFactory(priority=0, run_at=past(-500), status=TaskStatus.SCHEDULED)
    TaskFactory(priority=0, run_at=past(900), status=TaskStatus.COMPLETED)
    low.refresh_from_db()
    assert queries.oldest_due_at() == low.run_at
    assert queries.oldest_due_at(queue="default") is not None
    assert queries.oldest_due_at(queue="default") > low.run_at
    assert queries.oldest_due_at(queue="nowhere") is None


@pytest.mark.postgres_only
def test_large_statuses_are_estimated_and_named_approximate(monkeypatch: Any) -> None:
    monkeypatch.setattr(queries, "STATUS_EXACT_LIMIT", 20)
    TaskFactory.create_batch(30, task_type="bulk", run_at=past(60))
    TaskFactory.create_batch(10, task_type="bulk", queue="other", run_at=past(60))
    TaskFactory.create_batch(3, task_type="noop", run_at=past(20))
    TaskFactory.create_batch(8, task_type="bulk", status=TaskStatus.COMPLETED, completed_at=past(5))
    TaskFactory(task_type="noop", status=TaskStatus.RUNNING)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")
    data = stats.collect()
    # ANALYZE read every row of this small table, and a small table's sample is every
    # block: the estimates are the true counts.
    assert data["counts"]["pending"] == 43
    assert data["counts"]["completed"] == 8 and data["counts"]["running"] == 1
    assert data["counts"]["total"] == 52
    assert data["by_type"]["bulk"]["pending"] == 40 and data["by_type"]["bulk"]["approximate"]
    assert data["by_type"]["noop"]["pending"] == 3
    assert data["by_queue"]["other"]["pending"] == 10 and data["by_queue"]["other"]["approximate"]
    assert data["by_queue"]["other"]["oldest_pending_age"] == pytest.approx(60, abs=5)
    assert data["due"] == 43
    notes = " ".join(data["approximate"])
    assert "counts.pending: planner estimate" in notes and "block sample" in notes
    assert "counts.running" not in notes and "counts.completed" not in notes
    assert data["oldest_pending_age"] == pytest.approx(60, abs=5)


@pytest.mark.postgres_only
def test_a_stale_estimate_never_shrinks_a_counted_backlog(monkeypatch: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")  # analyzed while empty
    monkeypatch.setattr(queries, "GROUP_EXACT_LIMIT", 5)
    TaskFactory.create_batch(12, task_type="bulk", run_at=past(60))
    TaskFactory.create_batch(2, task_type="noop", run_at=past(60))
    data = stats.collect()
    # Counting stopped at 5 bulk tasks: the status is estimated, at least at what was counted.
    assert data["counts"]["pending"] >= 7
    assert data["by_type"]["bulk"]["approximate"]
    assert "counts.pending" in " ".join(data["approximate"])


def test_window_is_checked() -> None:
    assert stats.parse_window(None) == 3600
    assert stats.parse_window("600") == 600
    for bad, words in (("abc", "whole number"), ("10", "between"), (str(10**9), "between")):
        with pytest.raises(stats.StatsError, match=words):
            stats.parse_window(bad)


def test_stats_command_prints_tables_and_json() -> None:
    known_mix()
    minute_row(0, "noop", succeeded=6, failed=2, run_histogram=histogram(b4=8))
    out = io.StringIO()
    call_command("taskqueue_stats", stdout=out)
    text = out.getvalue()
    for heading in ("Queues", "Task types", "Live workers: 1", "pending", "emails", "25.0%"):
        assert heading in text, heading
    out = io.StringIO()
    call_command("taskqueue_stats", "--json", "--window", "120", stdout=out)
    data = json.loads(out.getvalue())
    assert data["window"] == 120 and data["counts"]["total"] == 16
    with pytest.raises(CommandError, match="between"):
        call_command("taskqueue_stats", "--window", "5", stdout=io.StringIO())


def test_unique_ids_do_not_matter_for_counts() -> None:
    # Guards the grouped query against counting a task once per dependency or attempt.
    task = TaskFactory(run_at=past(5))
    other = TaskFactory(id=uuid.uuid4(), status=TaskStatus.WAITING)
    other.depends_on.add(task)
    assert stats.collect()["counts"]["total"] == 2


# --- with a real worker process --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_shows_live_and_its_outcomes_reach_the_stats(start_worker: Any) -> None:
    import signal

    import taskqueue
    from taskqueue.monitoring import health
    from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure

    process = start_worker("--pool", "threads")
    with worker_stderr_on_failure(process):
        wait_for(lambda: stats.collect()["workers"]["live"] == 1, message="the worker to be live")
        for _ in range(3):
            taskqueue.enqueue("noop", {})
        taskqueue.enqueue("always_fails", {})
        wait_for(
            lambda: Task.objects.filter(status__in=["completed", "failed"]).count() == 4,
            message="the tasks to finish",
        )
        data = stats.collect()
        [worker] = data["workers"]["list"]
        assert worker["pid"] == process.pid and worker["tasks_in_hand"] == 0
        assert "noop" in worker["task_types"] and worker["queues"] == ["default"]
        assert (data["counts"]["completed"], data["counts"]["failed"]) == (3, 1)
        assert data["dead_letters"] == {"unreviewed": 1}
        assert health.check().status == "healthy"
        process.send_signal(signal.SIGTERM)
        assert finish_worker(process)[0] == 0
    # The worker flushes what it counted when it stops.
    outcomes = stats.collect()["by_type"]
    assert outcomes["noop"]["window"]["succeeded"] == 3
    assert outcomes["noop"]["run_time"]["count"] == 3
    failing = outcomes["always_fails"]["window"]
    assert (failing["failed"], failing["retried"], failing["dead_lettered"]) == (3, 2, 1)
    assert failing["failure_rate"] == 1.0
    assert stats.collect()["workers"]["live"] == 0
