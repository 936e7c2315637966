"""Outcome metrics: real workers record a known mix of outcomes exactly, flushes from many
workers add up, a failed flush keeps its counts, the read API sums and interpolates, and
retention prunes per-minute rows but never the totals.
"""

from __future__ import annotations

import random
import signal
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.checks import run_checks
from django.db import DatabaseError, connection, connections
from django.db.models import Sum
from django.db.models.functions import Now

import taskqueue
from taskqueue import store
from taskqueue.builtins.prune import prune
from taskqueue.models import (
    MetricsMinute,
    MetricsTotal,
    Task,
    TaskStatus,
    Worker,
    WorkerStatus,
)
from taskqueue.monitoring.metrics import (
    BUCKETS,
    TIME_BUCKETS,
    per_minute,
    percentile,
    window_summaries,
)
from taskqueue.monitoring.recorder import MetricsRecorder
from taskqueue.store.sql import db_now
from taskqueue.store.transitions import Transition
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.factories import TaskFactory, claim, past
from tests.testapp.models import Counter

COUNTERS = ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "timed_out")
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


def bucket_of(seconds: float) -> int:
    return next((i for i, bound in enumerate(TIME_BUCKETS) if seconds <= bound), BUCKETS - 1)


def minute_sums(**filters: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every MetricsMinute row summed per (type, queue), histograms element-wise."""
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    for row in MetricsMinute.objects.filter(**filters):
        entry = sums.setdefault(
            (row.task_type, row.queue),
            {
                **dict.fromkeys(COUNTERS, 0),
                "run_histogram": [0] * BUCKETS,
                "wait_histogram": [0] * BUCKETS,
                "wait_seconds": 0.0,
            },
        )
        for name in COUNTERS:
            entry[name] += getattr(row, name)
        entry["wait_seconds"] += row.wait_seconds
        for name in ("run_histogram", "wait_histogram"):
            entry[name] = [a + b for a, b in zip(entry[name], getattr(row, name), strict=True)]
    return sums


def counters_of(values: Any) -> dict[str, int]:
    if isinstance(values, dict):
        return {name: values[name] for name in COUNTERS}
    return {name: getattr(values, name) for name in COUNTERS}


def expected(**counts: int) -> dict[str, int]:
    return {**dict.fromkeys(COUNTERS, 0), **counts}


# --- a real worker records a known mix of outcomes exactly -------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_records_a_known_mix_of_outcomes_exactly(start_worker) -> None:
    started = db_now("default")
    sleeps = [taskqueue.enqueue("metrics_sleep", {"seconds": 0.6}) for _ in range(3)]
    # Due 100 s ago: its wait lands in the (60 s, 300 s] bucket.
    Task.objects.filter(id=sleeps[0].id).update(run_at=Now() - timedelta(seconds=100))
    taskqueue.enqueue("metrics_fails")  # two failed attempts: retried, then dead-lettered
    taskqueue.enqueue("metrics_timeout")  # one timed-out attempt, dead-lettered
    cancelled = taskqueue.enqueue("await_cancel", {"key": "metrics-cancel", "then": "raise"})
    never_run = taskqueue.enqueue("metrics_sleep")
    taskqueue.cancel(never_run.id)  # cancelled before any worker saw it: not a worker outcome

    worker = start_worker("--queues", "metrics,cancel", "--id", "metrics-a", "--concurrency", "2")
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: Counter.objects.filter(key="metrics-cancel").exists(),
            message="the cancellable task to start",
        )
        taskqueue.cancel(cancelled.id)
        wait_for(
            lambda: not Task.objects.exclude(status__in=FINISHED).exists(),
            timeout=60,
            message="every task to finish",
        )
        worker.send_signal(signal.SIGTERM)
        code, _, log = finish_worker(worker)
        assert code == 0, log

    sums = minute_sums()
    assert set(sums) == {
        ("metrics_sleep", "metrics"),
        ("metrics_fails", "metrics"),
        ("metrics_timeout", "metrics"),
        ("await_cancel", "cancel"),
    }
    assert counters_of(sums["metrics_sleep", "metrics"]) == expected(succeeded=3)
    assert counters_of(sums["metrics_fails", "metrics"]) == expected(
        failed=2, retried=1, dead_lettered=1
    )
    assert counters_of(sums["metrics_timeout", "metrics"]) == expected(
        failed=1, timed_out=1, dead_lettered=1
    )
    assert counters_of(sums["await_cancel", "cancel"]) == expected(cancelled=1)
    sleep = sums["metrics_sleep", "metrics"]
    assert sleep["run_histogram"][bucket_of(0.6)] == 3  # 0.6 s each, in (0.5 s, 1 s]
    assert sum(sleep["wait_histogram"]) == 3
    assert sleep["wait_histogram"][bucket_of(100)] == 1
    assert 100 <= sleep["wait_seconds"] < 200
    # One run-time and one wait-time sample per attempt.
    assert sum(sums["metrics_fails", "metrics"]["run_histogram"]) == 2
    assert sum(sums["metrics_fails", "metrics"]["wait_histogram"]) == 2
    assert sum(sums["await_cancel", "cancel"]["run_histogram"]) == 1
    assert set(MetricsMinute.objects.values_list("worker_id", flat=True)) == {"metrics-a"}

    # The totals hold the same numbers; so does the read API over the window.
    totals = {(row.task_type, row.queue): row for row in MetricsTotal.objects.all()}
    assert set(totals) == set(sums)
    summaries = {(s.task_type, s.queue): s for s in window_summaries(started - timedelta(60))}
    assert set(summaries) == set(sums)
    for key, entry in sums.items():
        assert counters_of(totals[key]) == counters_of(entry), key
        assert totals[key].run_histogram == entry["run_histogram"], key
        assert counters_of(summaries[key]) == counters_of(entry), key
        assert summaries[key].run_histogram == entry["run_histogram"], key
        assert summaries[key].wait_histogram == entry["wait_histogram"], key
    minutes = per_minute(started - timedelta(minutes=1))
    assert sum(succeeded for _, succeeded, _ in minutes) == 3
    assert sum(failed for _, _, failed in minutes) == 3


# --- many workers ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_workers_write_their_own_minute_rows_and_the_same_totals(start_worker) -> None:
    names = ("metrics-1", "metrics-2")
    workers = [start_worker("--queues", "metrics", "--id", name) for name in names]
    tasks = 40
    with worker_stderr_on_failure(*workers):
        # Both serving before the work arrives, so both take a share of it.
        wait_for(
            lambda: Worker.objects.filter(id__in=names, status=WorkerStatus.RUNNING).count() == 2,
            message="both workers to start",
        )
        for _ in range(tasks):
            taskqueue.enqueue("metrics_sleep", {"seconds": 0.1})
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.COMPLETED).count() == tasks,
            timeout=60,
            message="every task to complete",
        )
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            code, _, log = finish_worker(worker)
            assert code == 0, log

    ran_by = dict(Worker.objects.values_list("id", "tasks_processed"))
    assert set(ran_by) == set(names)
    assert sum(ran_by.values()) == tasks
    recorded: dict[str, int] = defaultdict(int)
    for worker_id, succeeded in MetricsMinute.objects.values_list("worker_id", "succeeded"):
        recorded[worker_id] += succeeded
    # Each worker counted exactly what it ran, in rows of its own.
    assert dict(recorded) == {name: count for name, count in ran_by.items() if count}
    total = MetricsTotal.objects.get(task_type="metrics_sleep", queue="metrics")
    assert total.succeeded == tasks
    assert sum(total.run_histogram) == tasks


def _flush_rounds(worker_id: str, rounds: int, per_round: int, errors: list[BaseException]) -> None:
    recorder = MetricsRecorder(worker_id, "default")
    claimed = _claimed_like(TaskFactory.build(task_type="metrics_sleep", queue="metrics"))
    try:
        for _ in range(rounds):
            for _ in range(per_round):
                recorder.count(Transition(claimed, TaskStatus.COMPLETED, duration=0.01))
            recorder.flush()
    except BaseException as exc:  # reported to the test's thread
        errors.append(exc)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_concurrent_flushes_into_the_same_totals_lose_nothing() -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_flush_rounds, args=(f"flusher-{n}", 15, 3, errors))
        for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    total = MetricsTotal.objects.get(task_type="metrics_sleep", queue="metrics")
    assert total.succeeded == 3 * 15 * 3
    assert total.run_histogram[bucket_of(0.01)] == 3 * 15 * 3
    per_worker = MetricsMinute.objects.values("worker_id").annotate(n=Sum("succeeded"))
    assert {row["worker_id"]: row["n"] for row in per_worker} == {
        f"flusher-{n}": 45 for n in range(3)
    }


# --- a failed flush keeps its counts -----------------------------------------------------


def _claimed_like(task: Any, **fields: Any) -> store.ClaimedTask:
    now = datetime.now(UTC)
    return store.ClaimedTask(
        id=task.id,
        task_type=task.task_type,
        queue=task.queue,
        payload={},
        priority=0,
        attempts=1,
        max_attempts=3,
        retry=None,
        timeout=None,
        lease_id=task.id,
        started_at=fields.get("started_at", now),
        run_at=fields.get("run_at", now - timedelta(seconds=2)),
    )


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_hits_a_database_error_keeps_its_counts_for_the_next() -> None:
    recorder = MetricsRecorder("flaky", "default")
    recorder.sync_clock()
    task = _claimed_like(TaskFactory.build(task_type="metrics_fails", queue="metrics"))
    recorder.count(Transition(task, TaskStatus.RETRYING, duration=0.2))
    recorder.count(Transition(task, TaskStatus.FAILED, duration=0.3, timed_out=True))
    table = MetricsTotal._meta.db_table
    # A real database error halfway through the flush: the minute rows are written, then
    # the totals table is missing.
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        with pytest.raises(DatabaseError):
            recorder.flush()
        recorder.count(Transition(task, TaskStatus.CANCELLED, duration=0.1))  # counted meanwhile
    finally:
        connection.close()  # PostgreSQL: leave the aborted connection behind
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    # Nothing of the failed flush stayed: it was one transaction.
    assert not MetricsMinute.objects.exists()

    assert recorder.flush() >= 1
    assert recorder.flush() == 0  # nothing left: written once, not twice
    totals = MetricsTotal.objects.get(task_type="metrics_fails")
    assert counters_of(totals) == expected(
        failed=2, retried=1, dead_lettered=1, timed_out=1, cancelled=1
    )
    assert counters_of(minute_sums()["metrics_fails", "metrics"]) == counters_of(totals)
    assert sum(totals.run_histogram) == 3
    assert MetricsMinute.objects.aggregate(w=Sum("wait_seconds"))["w"] == pytest.approx(6.0)


@pytest.mark.django_db(transaction=True)
def test_rescued_tasks_are_counted_by_the_rescuer() -> None:
    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    retried = TaskFactory(task_type="metrics_sleep", queue="default", run_at=past(30))
    claim(retried, "silent")
    spent = TaskFactory(task_type="metrics_sleep", queue="default", max_attempts=1, run_at=past())
    claim(spent, "silent")
    recorder = MetricsRecorder("rescuer", "default")
    recorder.sync_clock()

    result = store.rescue_stale_tasks(60, "rescuer", random.Random(0))
    recorder.count_all(result.transitions)
    recorder.flush()

    row = MetricsMinute.objects.get()
    assert (row.worker_id, row.task_type, row.queue) == ("rescuer", "metrics_sleep", "default")
    assert counters_of(row) == expected(failed=2, retried=1, dead_lettered=1)
    assert sum(row.run_histogram) == 0  # how long a lost attempt ran is unknown
    assert sum(row.wait_histogram) == 2
    assert row.wait_seconds >= 30


# --- the read API ------------------------------------------------------------------------


def test_percentiles_interpolate_within_the_bucket() -> None:
    empty = [0] * BUCKETS
    assert percentile(empty, 0.5) is None
    assert percentile([], 0.99) is None
    one_bucket = list(empty)
    one_bucket[1] = 10  # (0.005, 0.01]
    assert percentile(one_bucket, 0.5) == pytest.approx(0.0075)
    assert percentile(one_bucket, 1.0) == pytest.approx(0.01)
    assert percentile(one_bucket, 0.0) == pytest.approx(0.005)
    split = list(empty)
    split[0], split[7] = 50, 50  # [0, 0.005] and (0.5, 1]
    assert percentile(split, 0.5) == pytest.approx(0.005)
    assert percentile(split, 0.95) == pytest.approx(0.95)
    assert percentile(split, 0.99) == pytest.approx(0.99)
    above = list(empty)
    above[-1] = 3  # over the last bound: reported as the bound
    assert percentile(above, 0.5) == TIME_BUCKETS[-1]
    with pytest.raises(ValueError, match=r"fraction must be from 0 to 1, got 1\.5"):
        percentile(split, 1.5)
    with pytest.raises(ValueError, match=f"a histogram has {BUCKETS} counts"):
        percentile([1, 2, 3], 0.5)


def _minute_row(minute: datetime, worker_id: str = "w", **values: Any) -> MetricsMinute:
    return MetricsMinute.objects.create(
        minute=minute,
        worker_id=worker_id,
        task_type=values.pop("task_type", "t"),
        queue=values.pop("queue", "q"),
        **values,
    )


@pytest.mark.django_db
def test_window_summaries_sum_every_worker_and_per_minute_fills_gaps() -> None:
    now = db_now("default")
    this_minute = now.replace(second=0, microsecond=0)
    run = [0] * BUCKETS
    run[2] = 4
    _minute_row(this_minute, "a", succeeded=4, run_seconds=0.1, run_histogram=run)
    _minute_row(this_minute - timedelta(minutes=2), "b", succeeded=1, failed=2, retried=2)
    _minute_row(this_minute, "b", task_type="u", cancelled=1)
    _minute_row(this_minute - timedelta(hours=2), "a", succeeded=100)  # outside the window

    since = now - timedelta(minutes=5)
    summaries = {(s.task_type, s.queue): s for s in window_summaries(since)}
    assert set(summaries) == {("t", "q"), ("u", "q")}
    t = summaries["t", "q"]
    assert (t.succeeded, t.failed, t.retried) == (5, 2, 2)
    assert t.run_histogram == run
    assert t.run_seconds == pytest.approx(0.1)
    assert t.wait_histogram == [0] * BUCKETS  # rows with no samples sum to zeros
    assert summaries["u", "q"].cancelled == 1

    minutes = per_minute(since)
    assert len(minutes) == 5  # the minutes starting after `since`, the current one included
    assert [m for m, _, _ in minutes] == [
        this_minute - timedelta(minutes=n) for n in range(4, -1, -1)
    ]
    assert minutes[-1][1:] == (4, 0)
    assert minutes[-3][1:] == (1, 2)
    assert [minutes[n][1:] for n in (0, 1, 3)] == [(0, 0)] * 3
    with pytest.raises(ValueError, match="aware datetimes"):
        per_minute(datetime(2024, 1, 1))


# --- retention and settings --------------------------------------------------------------


@pytest.mark.django_db
def test_retention_prunes_old_minute_rows_and_never_the_totals(settings) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "METRICS": {"MINUTES_KEPT": 60}}
    now = db_now("default").replace(second=0, microsecond=0)
    old = _minute_row(now - timedelta(minutes=62), succeeded=1)
    recent = _minute_row(now - timedelta(minutes=58), succeeded=1)
    total = MetricsTotal.objects.create(task_type="t", queue="q", succeeded=2)

    assert prune(dry_run=True).counts["metrics"] == 1
    assert prune().counts["metrics"] == 1

    assert not MetricsMinute.objects.filter(pk=old.pk).exists()
    assert MetricsMinute.objects.filter(pk=recent.pk).exists()
    assert MetricsTotal.objects.get(pk=total.pk).succeeded == 2


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"FLUSH_INTERVAL": 0}, "TASKQUEUE['METRICS']['FLUSH_INTERVAL'] must be a positive"),
        ({"MINUTES_KEPT": 30}, "TASKQUEUE['METRICS']['MINUTES_KEPT'] must be a whole number"),
        ({"MINUTES_KEPT": 90.5}, "at least 60 (the stats view reports on the last hour)"),
        ({"EVERY": 1}, "Unknown key 'EVERY' in TASKQUEUE['METRICS']"),
    ],
)
def test_bad_metrics_settings_are_reported(settings, metrics: dict, message: str) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "METRICS": metrics}
    errors = [m.msg for m in run_checks() if m.id and m.id.startswith("taskqueue.")]
    assert any(message in error for error in errors), errors
