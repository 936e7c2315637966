"""Rescue of tasks held by workers that died or froze, with real worker processes."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import timedelta

import pytest
from django.db.models.functions import Now

import taskqueue
from taskqueue import store
from taskqueue.models import (
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskStatus,
    Worker,
    WorkerStatus,
)
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)

# tests/settings.py: STALE_AFTER 3 s, RESCUE_INTERVAL 0.5 s, HEARTBEAT_INTERVAL 1 s.
RESCUE_DEADLINE = 20.0


def _worker_pid(task: Task) -> int:
    """The pid of the worker that holds or completed ``task`` (claimed_by is host:pid:x)."""
    task.refresh_from_db()
    return int(task.claimed_by.split(":")[1])


def _status(task: Task) -> str:
    task.refresh_from_db()
    return task.status


def test_killed_workers_task_is_rescued_and_run_by_another(start_worker) -> None:
    task = taskqueue.enqueue("slow_first_attempt", {"key": "killed", "seconds": 60})
    doomed = start_worker("--queues", "slow", "--concurrency", "1")
    with worker_stderr_on_failure(doomed):
        wait_for(lambda: Counter.objects.filter(key="killed").exists(), message="attempt 1")
    doomed.kill()  # SIGKILL: no drain, no goodbye
    doomed.wait(timeout=10)
    rescuer = start_worker("--queues", "slow", "--concurrency", "1")
    with worker_stderr_on_failure(rescuer):
        wait_for(
            lambda: _status(task) == TaskStatus.COMPLETED,
            timeout=RESCUE_DEADLINE,
            message="the rescued task to complete",
        )
    assert task.attempts == 2
    assert task.result["attempt"] == 2
    assert _worker_pid(task) == rescuer.pid
    (lost,) = TaskAttempt.objects.filter(task=task)
    assert lost.outcome == AttemptOutcome.WORKER_LOST
    assert lost.error_type == "WorkerLost"
    assert lost.number == 1
    assert Worker.objects.get(pid=doomed.pid).status == WorkerStatus.LOST


@pytest.mark.parametrize(
    ("pool", "worker_crashes", "error_type"),
    [
        # In a thread the handler takes its whole worker down: rescue finds the task.
        ("threads", 2, "WorkerLost"),
        # In a child process only the child dies: the worker records the crash itself.
        ("processes", 0, "WorkerCrashed"),
    ],
)
def test_crash_poison_task_ends_dead_lettered_and_others_finish(
    start_worker, pool: str, worker_crashes: int, error_type: str
) -> None:
    poison = taskqueue.enqueue("crash_worker")
    others = taskqueue.enqueue_many([("add", {"a": n, "b": 1}) for n in range(20)])
    deadline = time.monotonic() + 60
    crashed = 0
    while (
        _status(poison) != TaskStatus.FAILED
        or Task.objects.filter(task_type="add").exclude(status=TaskStatus.COMPLETED).exists()
    ):
        assert time.monotonic() < deadline, f"not settled after {crashed} crashes"
        worker = start_worker("--concurrency", "1", "--pool", pool)
        # A worker either crashes on the poison task or runs until everything has settled.
        with worker_stderr_on_failure(worker):
            wait_for(
                lambda w=worker: (
                    w.poll() is not None
                    or (
                        _status(poison) == TaskStatus.FAILED
                        and not Task.objects.filter(task_type="add")
                        .exclude(status=TaskStatus.COMPLETED)
                        .exists()
                    )
                ),
                timeout=RESCUE_DEADLINE,
                message="a crash or a settled queue",
            )
        if worker.poll() is not None:
            assert worker.returncode == -signal.SIGKILL
            crashed += 1
        else:
            worker.send_signal(signal.SIGTERM)
            assert finish_worker(worker)[0] == 0
    assert crashed == worker_crashes  # max_attempts=2: one crash per attempt, then dead
    poison.refresh_from_db()
    assert poison.attempts == 2
    dead = DeadLetter.objects.get(task=poison)
    assert dead.error_type == error_type
    assert [entry["outcome"] for entry in dead.attempts_history] == ["worker_lost"] * 2
    assert {task.id for task in others} == set(
        Task.objects.filter(task_type="add", status=TaskStatus.COMPLETED).values_list(
            "id", flat=True
        )
    )


def test_frozen_worker_cannot_overwrite_its_successor(start_worker) -> None:
    task = taskqueue.enqueue("slow_first_attempt", {"key": "frozen", "seconds": 2})
    frozen = start_worker("--queues", "slow", "--concurrency", "1", "--shutdown-timeout", "30")
    with worker_stderr_on_failure(frozen):
        wait_for(lambda: Counter.objects.filter(key="frozen").exists(), message="attempt 1")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        successor = start_worker("--queues", "slow", "--concurrency", "1")
        with worker_stderr_on_failure(successor, frozen):
            wait_for(
                lambda: _status(task) == TaskStatus.COMPLETED,
                timeout=RESCUE_DEADLINE,
                message="the successor to complete the task",
            )
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    successor_result = task.result
    assert successor_result["attempt"] == 2
    assert _worker_pid(task) == successor.pid
    # Let the resumed worker finish its stale attempt (its drain waits for it), then check
    # that its late completion was dropped, not written over the successor's.
    frozen.send_signal(signal.SIGTERM)
    code, _, stderr = finish_worker(frozen, timeout=30)
    assert code == 0, stderr
    assert "dropped the completion" in stderr
    task.refresh_from_db()
    assert task.result == successor_result
    assert _worker_pid(task) == successor.pid
    assert task.attempts == 2
    successor.send_signal(signal.SIGTERM)
    assert finish_worker(successor)[0] == 0


def _running_for(worker_id: str, **task_options) -> Task:
    task = taskqueue.enqueue("add", {"a": 1, "b": 2}, **task_options)
    (claimed,) = store.claim_due_tasks(worker_id, ["default"], 1)
    assert claimed.id == task.id
    return task


def test_rescue_leaves_live_workers_alone_and_spends_attempts() -> None:
    Worker.objects.create(id="live", hostname="h", pid=1, concurrency=1)
    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    live_task = _running_for("live")
    retried = _running_for("silent")
    spent = _running_for("silent", max_attempts=1)
    vanished = _running_for("never-registered")

    result = store.rescue_stale_tasks(60, "rescuer", random.Random(0))

    assert sorted(result.retried) == sorted([retried.id, vanished.id])
    assert result.dead_lettered == [spent.id]
    assert result.lost_workers == ["silent"]
    assert _status(live_task) == TaskStatus.RUNNING
    assert _status(retried) == TaskStatus.RETRYING
    assert _status(spent) == TaskStatus.FAILED
    assert DeadLetter.objects.get(task=spent).error_type == "WorkerLost"
    # A second pass finds nothing left to do.
    again = store.rescue_stale_tasks(60, "rescuer", random.Random(0))
    assert (again.retried, again.dead_lettered, again.lost_workers) == ([], [], [])


def test_late_completion_of_a_rescued_task_is_dropped() -> None:
    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    task = taskqueue.enqueue("add", {"a": 1, "b": 2})
    (claimed,) = store.claim_due_tasks("silent", ["default"], 1)
    store.rescue_stale_tasks(60, "rescuer", random.Random(0))
    assert store.complete_tasks([(claimed, 3)]) == set()
    assert _status(task) == TaskStatus.RETRYING


def test_heartbeat_revives_a_worker_presumed_lost() -> None:
    from taskqueue.worker.presence import heartbeat

    Worker.objects.create(id="back", hostname="h", pid=3, concurrency=1, status=WorkerStatus.LOST)
    heartbeat("back", 0)
    assert Worker.objects.get(id="back").status == WorkerStatus.RUNNING


def test_a_worker_restarted_with_the_same_id_takes_back_its_old_tasks(start_worker) -> None:
    task = taskqueue.enqueue("add", {"a": 1, "b": 2})
    (claimed,) = store.claim_due_tasks("fixed-id", ["default"], 1)
    assert claimed.id == task.id  # then that process "died" holding it
    worker = start_worker("--id", "fixed-id")
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: _status(task) == TaskStatus.COMPLETED,
            timeout=RESCUE_DEADLINE,
            message="the restarted worker to take back and run its task",
        )
    worker.send_signal(signal.SIGTERM)
    assert finish_worker(worker)[0] == 0
    assert task.attempts == 2
    (lost,) = TaskAttempt.objects.filter(task=task)
    assert lost.outcome == AttemptOutcome.WORKER_LOST


def test_rescue_sends_the_failure_signals() -> None:
    from taskqueue import signals

    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    _running_for("silent")
    _running_for("silent", max_attempts=1)
    seen: list[str] = []

    def receiver(sender, event, **kwargs) -> None:
        seen.append(event.name)

    for signal_ in (signals.task_failed, signals.task_retry_scheduled, signals.task_dead_lettered):
        signal_.connect(receiver)
    try:
        store.rescue_stale_tasks(60, "rescuer", random.Random(0))
    finally:
        for signal_ in (
            signals.task_failed,
            signals.task_retry_scheduled,
            signals.task_dead_lettered,
        ):
            signal_.disconnect(receiver)
    assert sorted(seen) == ["dead_lettered", "failed", "failed", "retry_scheduled"]


def test_a_rescued_task_with_a_cancel_request_ends_cancelled_not_run_again() -> None:
    Worker.objects.create(
        id="silent", hostname="h", pid=2, concurrency=1, last_heartbeat=Now() - timedelta(minutes=5)
    )
    task = _running_for("silent")
    assert taskqueue.cancel(task) is False  # running: only a request
    result = store.rescue_stale_tasks(60, "rescuer", random.Random(0))
    assert result.cancelled == [task.id]
    assert result.retried == []
    row = Task.objects.get(pk=task.pk)
    assert row.status == TaskStatus.CANCELLED
    assert "stopped heartbeating" in row.last_error
