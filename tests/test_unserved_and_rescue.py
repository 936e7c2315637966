"""Rescue that no row can starve, one PostgreSQL application_name per handler slot, and
workers that leave task types they have no handler for to the workers that do."""

from __future__ import annotations

import random
import signal
import threading
import uuid
from collections import Counter as Tally
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.db.models.functions import Now

import taskqueue
from taskqueue import store
from taskqueue.core.registry import registry
from taskqueue.models import (
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskStatus,
    Worker,
    WorkerStatus,
)
from taskqueue.monitoring import health, queries, stats
from taskqueue.monitoring.unserved import TYPE_NOT_REGISTERED
from taskqueue.store import rescue, sql
from taskqueue.worker.pools.sessions import application_name
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.factories import past

pytestmark = pytest.mark.django_db(transaction=True)

NEWER_TYPE = "from_newer_release"  # registered by no handler in this code base


def _unleased(count: int, holder: str | None, **fields: Any) -> list[Task]:
    """Running rows without a lease, as a hand edit, an old version or a restore leaves them."""
    defaults = {"attempts": 1, "started_at": past(3600)}
    rows = [
        Task(
            task_type="noop",
            payload={},
            status=TaskStatus.RUNNING,
            claimed_by=holder,
            lease_id=None,
            **{**defaults, **fields},
        )
        for _ in range(count)
    ]
    return Task.objects.bulk_create(rows)


def _stale_worker(worker_id: str) -> Worker:
    return Worker.objects.create(
        id=worker_id,
        hostname="h",
        pid=1,
        concurrency=1,
        task_types=["noop"],
        last_heartbeat=Now() - timedelta(minutes=5),
    )


def _orphan(worker_id: str) -> Task:
    """A task claimed the normal way (with a lease) by ``worker_id``, which then went silent."""
    task = taskqueue.enqueue("noop", {})
    (claimed,) = store.claim_due_tasks(worker_id, ["default"], 1)
    assert claimed.id == task.id
    return task


def _lost_attempts(ids: list[uuid.UUID]) -> Tally[uuid.UUID]:
    return Tally(
        TaskAttempt.objects.filter(task_id__in=ids, outcome=AttemptOutcome.WORKER_LOST).values_list(
            "task_id", flat=True
        )
    )


# --- application_name -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=False)
def test_application_name_is_unique_per_slot_and_fits_in_63_bytes() -> None:
    long_id = "pod-" + "x" * 96  # a Kubernetes pod name, 100 characters
    twin = "pod-" + "x" * 95 + "y"  # the same first 99 characters
    non_ascii = "wörker-ünïcode-" + "é" * 40
    lookalike = "wärker-ünïcode-" + "é" * 40  # the same once made ASCII
    names = {
        (worker_id, slot): application_name(worker_id, slot)
        for worker_id in (long_id, twin, non_ascii, lookalike, "short", "日本")
        for slot in range(16)
    }
    assert len(set(names.values())) == len(names)
    for (_, slot), name in names.items():
        assert len(name.encode()) <= 63, name
        assert name.isascii() and name.isprintable(), name
        assert name.endswith(f":{slot}") and name.startswith("taskqueue:")
    # Readable: a short ASCII id is kept whole, a long one keeps its head.
    assert application_name("short", 3) == "taskqueue:short:3"
    assert application_name(long_id, 0).startswith("taskqueue:pod-xxxx")


@pytest.mark.postgres_only
def test_a_timeout_kill_in_one_slot_leaves_the_other_slots_query_alone(start_worker) -> None:
    worker_id = "k8s-" + "a" * 96
    # The sleeper first (higher priority), so both are claimed together, one per slot.
    sleeper = taskqueue.enqueue("appname_sleeper", {"seconds": 5}, priority="high")
    hang = taskqueue.enqueue("appname_hang", {})
    worker = start_worker(
        "--id", worker_id, "--queues", "appname", "--concurrency", "2", "--pool", "processes"
    )
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: (
                Task.objects.filter(
                    id__in=[sleeper.id, hang.id],
                    status__in=[TaskStatus.COMPLETED, TaskStatus.FAILED],
                ).count()
                == 2
            ),
            timeout=45,
            message="both tasks to finish",
        )
        hang.refresh_from_db()
        sleeper.refresh_from_db()
        assert hang.status == TaskStatus.FAILED
        killed = DeadLetter.objects.get(task=hang)
        assert killed.error_type == "TimeoutError", killed.error
        # The other slot's pg_sleep was running when the hung one was killed, and finished.
        assert sleeper.status == TaskStatus.COMPLETED, sleeper.last_error
        assert sleeper.attempts == 1
        assert sleeper.started_at < killed.failed_at < sleeper.completed_at
        session = sleeper.result
        assert session in {application_name(worker_id, slot) for slot in (0, 1)}
        assert len(session.encode()) <= 63
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output


# --- rescue of running rows without a lease -------------------------------------------------


def test_running_rows_without_a_lease_are_rescued_whoever_holds_them() -> None:
    _stale_worker("silent")
    Worker.objects.create(id="alive", hostname="h", pid=2, concurrency=1)
    absent = _unleased(1, "never-registered")[0]
    stale = _unleased(1, "silent")[0]
    nobody = _unleased(1, None, attempts=0)[0]  # never counted as an attempt
    held_by_live = _unleased(1, "alive")[0]  # no lease: not even "alive" could finish it
    spent = _unleased(1, "never-registered", attempts=3, max_attempts=3)[0]

    result = rescue.rescue_stale_tasks(60, "rescuer", random.Random(0))

    assert sorted(result.retried) == sorted([absent.id, stale.id, nobody.id, held_by_live.id])
    assert result.dead_lettered == [spent.id]
    assert result.failed == [] and result.finished
    assert {transition.task.id for transition in result.transitions} == {
        absent.id,
        stale.id,
        nobody.id,
        held_by_live.id,
        spent.id,
    }
    for task in (absent, stale, nobody, held_by_live):
        task.refresh_from_db()
        assert task.status == TaskStatus.RETRYING and task.claimed_by is None
        assert task.attempts == 1
        (lost,) = TaskAttempt.objects.filter(task=task)
        assert (lost.outcome, lost.error_type, lost.number) == (
            AttemptOutcome.WORKER_LOST,
            "WorkerLost",
            1,
        )
        assert "without a lease" in lost.error and "rescued by rescuer" in lost.error
    assert DeadLetter.objects.get(task=spent).error_type == "WorkerLost"
    again = rescue.rescue_stale_tasks(60, "rescuer", random.Random(1))
    assert (again.retried, again.dead_lettered, again.failed) == ([], [], [])


def test_rows_that_fail_to_rescue_do_not_hold_up_the_others(monkeypatch) -> None:
    monkeypatch.setattr(rescue, "RESCUE_BATCH", 3)
    real_strategy = rescue.strategy_from_dict

    def strategy_or_boom(data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "poison":
            raise ValueError("a row this rescue cannot handle")
        return real_strategy(data)

    monkeypatch.setattr(rescue, "strategy_from_dict", strategy_or_boom)
    poisoned = _unleased(4, "gone", retry={"kind": "poison"})
    healthy = _unleased(7, "gone")
    _stale_worker("silent")
    orphan = _orphan("silent")

    result = rescue.rescue_stale_tasks(60, "rescuer", random.Random(0))

    assert sorted(result.retried) == sorted([task.id for task in healthy] + [orphan.id])
    assert sorted(result.failed) == sorted(task.id for task in poisoned)
    for task in poisoned:
        task.refresh_from_db()
        assert (task.status, task.lease_id) == (TaskStatus.RUNNING, None)  # rolled back
    assert not _lost_attempts([task.id for task in poisoned])


def test_six_hundred_unleased_rows_and_a_real_orphan_are_all_rescued(start_worker) -> None:
    # Older than the orphan: ordered by start time, they alone would fill every batch.
    unleased = _unleased(600, "long-gone", started_at=past(7200))
    _stale_worker("silent")
    orphan = _orphan("silent")
    ids = [task.id for task in unleased] + [orphan.id]
    worker = start_worker("--queues", "other")
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: (
                Worker.objects.filter(
                    status=WorkerStatus.RUNNING, last_heartbeat__gte=Now() - timedelta(seconds=2)
                )
                .exclude(id="silent")
                .exists()
            ),
            message="the rescuing worker to start",
        )
        # tests/settings.py: RESCUE_INTERVAL 0.5 s; a pass may stop at its 0.75 s budget.
        wait_for(
            lambda: len(_lost_attempts(ids)) == len(ids),
            timeout=20,
            message="every unleased row and the orphan to be rescued",
        )
        assert set(_lost_attempts(ids).values()) == {1}
        assert not Task.objects.filter(id__in=ids, status=TaskStatus.RUNNING).exists()
        assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output


def test_two_rescuers_at_once_rescue_each_task_once() -> None:
    unleased = _unleased(150, "long-gone")
    _stale_worker("silent")
    leased = [_orphan("silent") for _ in range(30)]
    ids = [task.id for task in unleased + leased]
    barrier = threading.Barrier(2)
    results: dict[str, rescue.RescueResult] = {}
    errors: list[BaseException] = []

    def rescuer(name: str, seed: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[name] = rescue.rescue_stale_tasks(60, name, random.Random(seed))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=rescuer, args=(name, seed))
        for name, seed in (("one", 1), ("two", 2))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    one, two = results["one"].retried, results["two"].retried
    assert not set(one) & set(two)
    assert sorted(one + two) == sorted(ids)
    assert _lost_attempts(ids) == Tally(dict.fromkeys(ids, 1))
    attempts = set(Task.objects.filter(id__in=ids).values_list("status", "attempts"))
    assert attempts == {(TaskStatus.RETRYING, 1)}


# --- claim only registered types --------------------------------------------------------------


def test_a_type_no_handler_serves_waits_pending_while_a_worker_runs_the_rest(
    run_worker, start_worker
) -> None:
    # Enqueued by newer code (its web servers), not yet known to this worker's code.
    newer = Task.objects.create(task_type=NEWER_TYPE, payload={"n": 1}, priority=100)
    others = taskqueue.enqueue_many([("add", {"a": n, "b": 1}) for n in range(5)])

    result = run_worker("--burst")

    assert (
        Task.objects.filter(
            id__in=[task.id for task in others], status=TaskStatus.COMPLETED
        ).count()
        == 5
    ), result.stderr
    newer.refresh_from_db()
    assert (newer.status, newer.attempts, newer.claimed_by) == (TaskStatus.PENDING, 0, None)
    assert not DeadLetter.objects.filter(task=newer).exists()
    assert not TaskAttempt.objects.filter(task=newer).exists()

    worker = start_worker("--id", "older-release")
    with worker_stderr_on_failure(worker):
        wait_for(lambda: stats.collect()["workers"]["live"] == 1, message="the worker to be live")
        data = stats.collect()
        assert data["unserved_work"] == [
            {
                "task_type": NEWER_TYPE,
                "queue": "default",
                "due": 1,
                "reason": TYPE_NOT_REGISTERED,
                "queue_workers": ["older-release"],
            }
        ]
        verdict = health.check()
        assert verdict.status == health.UNHEALTHY
        (issue,) = verdict.issues
        assert issue.code == "no_worker"
        assert f"no handler registered for {NEWER_TYPE!r}" in issue.message
        assert "leave these tasks pending" in issue.message
        newer.refresh_from_db()
        assert (newer.status, newer.attempts) == (TaskStatus.PENDING, 0)
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output


@pytest.mark.django_db(transaction=False)
def test_the_claim_takes_only_registered_types_and_nothing_without_handlers() -> None:
    newer = Task.objects.create(task_type=NEWER_TYPE, payload={}, priority=100)
    known = taskqueue.enqueue("noop", {})
    alias = store.database_alias()
    assert sql.claim_due(alias, "w", ["default"], 5, task_type=NEWER_TYPE) == []
    with registry.override(keep_existing=False):
        assert store.claim_due_tasks("w", ["default"], 5) == []
    (claimed,) = store.claim_due_tasks("w", ["default"], 5)
    assert claimed.id == known.id
    newer.refresh_from_db()
    assert (newer.status, newer.attempts) == (TaskStatus.PENDING, 0)


@pytest.mark.postgres_only
def test_an_unserved_type_is_named_even_when_the_sample_misses_it(monkeypatch) -> None:
    # A status over the limit is estimated and split by a block sample; squeezed to almost
    # nothing here, the sample cannot be relied on to see the one unserved task.
    monkeypatch.setattr(queries, "STATUS_EXACT_LIMIT", 20)
    monkeypatch.setattr(queries, "SAMPLE_LIMIT", 1)
    monkeypatch.setattr(queries, "SAMPLE_ROWS", 1)
    taskqueue.enqueue_many([("noop", {}) for _ in range(60)])
    Task.objects.create(task_type=NEWER_TYPE, payload={}, queue="default")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")
    Worker.objects.create(
        id="older", hostname="h", pid=1, concurrency=1, queues=["default"], task_types=["noop"]
    )
    data = stats.collect()
    assert "pending" in " ".join(data["approximate"])
    named = [item for item in data["unserved_work"] if item["task_type"] == NEWER_TYPE]
    assert named == [
        {
            "task_type": NEWER_TYPE,
            "queue": "default",
            "due": 1,
            "reason": TYPE_NOT_REGISTERED,
            "queue_workers": ["older"],
        }
    ]
