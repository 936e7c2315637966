"""``manage.py run_worker`` as real subprocesses: claiming, ordering, queues, presence, wake-up."""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter as Tally
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

import taskqueue
from taskqueue.models import Task, TaskStatus, TaskType, Worker, WorkerStatus
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.testapp.models import LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)


def statuses() -> dict[str, int]:
    return dict(Task.objects.values_list("status").annotate(n=Count("id")).order_by())


def completed(*tasks: Task) -> bool:
    return Task.objects.filter(
        id__in=[t.id for t in tasks], status=TaskStatus.COMPLETED
    ).count() == len(tasks)


# --- many workers, one queue ---------------------------------------------------------------


@pytest.mark.slow
def test_several_workers_run_every_task_exactly_once(start_worker):
    total = 2000
    taskqueue.enqueue_many([("ledger", {"n": n}) for n in range(total)])

    workers = [start_worker("--burst") for _ in range(3)]
    outputs = [finish_worker(process, timeout=150) for process in workers]

    for code, _, stderr in outputs:
        assert code == 0, stderr
    stderr_all = "\n".join(stderr for _, _, stderr in outputs)
    assert statuses() == {TaskStatus.COMPLETED: total}, stderr_all
    per_n = Tally(LedgerEntry.objects.values_list("n", flat=True))
    twice = sorted(n for n, runs in per_n.items() if runs > 1)
    assert not twice, f"ran more than once: {twice[:20]}"
    assert set(per_n) == set(range(total)), (
        f"never ran: {sorted(set(range(total)) - set(per_n))[:20]}"
    )
    assert LedgerEntry.objects.count() == total
    # Handlers run in the workers' child processes; the worker that claimed and completed
    # each task is in claimed_by ("host:pid:suffix").
    per_pid = Tally(
        int(worker_id.split(":")[1])
        for worker_id in Task.objects.values_list("claimed_by", flat=True)
    )
    print(f"\ntasks completed per worker pid: {dict(per_pid)}")
    assert set(per_pid) <= {process.pid for process in workers}
    # SQLite serialises writers, so one worker can drain a burst before another gets going.
    expected_workers = 3 if connection.vendor == "postgresql" else 2
    assert len(per_pid) >= expected_workers, f"work per pid: {dict(per_pid)}"


# --- what a single worker claims, and in which order --------------------------------------


def test_higher_priority_runs_first(run_worker):
    # Arrival order is the reverse of priority order, and every task is due at the same time.
    same_time = timezone.now() - timedelta(seconds=5)
    priorities = ["low", "normal", "high", "critical"]
    taskqueue.enqueue_many(
        [
            {"task_type": "ledger", "payload": {"n": i}, "priority": name, "run_at": same_time}
            for _ in range(2)
            for i, name in enumerate(priorities)
        ]
    )
    result = run_worker("--burst", "--concurrency", "1")
    order = list(LedgerEntry.objects.order_by("id").values_list("n", flat=True))
    assert [priorities[i] for i in order] == [
        "critical",
        "critical",
        "high",
        "high",
        "normal",
        "normal",
        "low",
        "low",
    ], result.stderr


def test_worker_serves_only_its_queues(run_worker):
    slow = [
        taskqueue.enqueue("sleepy", {"seconds": 0}),
        taskqueue.enqueue("echo", {"value": 1}, queue="slow"),
    ]
    default = [taskqueue.enqueue("add", {"a": 1, "b": 2}), taskqueue.enqueue("echo", {"value": 2})]
    result = run_worker("--burst", "--queues", "slow")
    assert completed(*slow), result.stderr
    assert set(
        Task.objects.filter(id__in=[t.id for t in default]).values_list("status", "attempts")
    ) == {(TaskStatus.PENDING, 0)}


def test_max_tasks_exits_after_claiming_that_many(start_worker):
    taskqueue.enqueue_many([("ledger", {"n": n}) for n in range(12)])
    process = start_worker("--max-tasks", "5")
    code, _, stderr = finish_worker(process, timeout=30)
    assert code == 0, stderr
    assert statuses() == {TaskStatus.COMPLETED: 5, TaskStatus.PENDING: 7}, stderr
    assert LedgerEntry.objects.count() == 5, stderr


# --- presence ------------------------------------------------------------------------------


def test_running_worker_registers_heartbeats_and_says_goodbye(start_worker):
    process = start_worker("--queues", "default,slow")
    with worker_stderr_on_failure(process):
        worker = wait_for(
            lambda: Worker.objects.filter(pid=process.pid).first(),
            timeout=15,
            message="the worker's row",
        )
        assert worker.status == WorkerStatus.RUNNING
        assert worker.hostname == socket.gethostname()
        assert worker.queues == ["default", "slow"]
        assert str(process.pid) in worker.id
        served = set(worker.task_types)
        assert {"add", "ledger", "sleepy", "with_context"} <= served
        wait_for(
            lambda: TaskType.objects.filter(name__in=served, is_active=True).count() == len(served),
            timeout=5,
            message="every served task type to be active",
        )
        first_beat = worker.last_heartbeat
        wait_for(
            lambda: Worker.objects.get(id=worker.id).last_heartbeat > first_beat,
            timeout=5,
            message="a heartbeat",
        )
        process.send_signal(signal.SIGTERM)
        code, _, stderr = finish_worker(process, timeout=15)
        assert code == 0, stderr

    worker.refresh_from_db()
    assert worker.status == WorkerStatus.STOPPED, stderr
    assert worker.stopped_at is not None
    still_active = TaskType.objects.filter(name__in=served, is_active=True)
    assert not still_active.exists(), list(still_active.values_list("name", flat=True))


# --- waking up and transactions ------------------------------------------------------------


def listening_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN taskqueue' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def wait_until_idle_after_one_task() -> None:
    # The completion is committed in the same transaction as the next (empty) claim, so once
    # this task reads completed the worker has nothing left but to sleep.
    warm_up = taskqueue.enqueue("noop", {})
    wait_for(lambda: completed(warm_up), timeout=15, message="the warm-up task")


@pytest.mark.postgres_only
def test_idle_worker_wakes_on_notify_long_before_its_poll(start_worker):
    process = start_worker("--poll-interval", "30")
    with worker_stderr_on_failure(process):
        wait_for(listening_connections, timeout=15, message="the worker to LISTEN")
        wait_until_idle_after_one_task()
        enqueued_at = time.monotonic()
        task = taskqueue.enqueue("add", {"a": 1, "b": 1})
        # Polling alone would take up to 30 s: only NOTIFY gets it done this soon.
        wait_for(lambda: completed(task), timeout=5, message="the task enqueued while idle")
        print(f"\npicked up and completed in {time.monotonic() - enqueued_at:.3f} s")


def test_idle_worker_picks_up_new_task_by_polling(start_worker):
    process = start_worker("--poll-interval", "0.2")
    with worker_stderr_on_failure(process):
        wait_until_idle_after_one_task()
        task = taskqueue.enqueue("add", {"a": 1, "b": 1})
        wait_for(lambda: completed(task), timeout=3, message="the task enqueued while idle")


class Abort(Exception):
    pass


def test_task_enqueued_in_a_rolled_back_transaction_never_runs(start_worker):
    process = start_worker()
    with worker_stderr_on_failure(process):
        wait_until_idle_after_one_task()
        with pytest.raises(Abort), transaction.atomic():
            doomed = taskqueue.enqueue("ledger", {"n": 1})
            raise Abort
        kept = taskqueue.enqueue("ledger", {"n": 2})
        wait_for(lambda: completed(kept), timeout=10, message="the committed task")
    assert not Task.objects.filter(id=doomed.id).exists()
    assert list(LedgerEntry.objects.values_list("n", flat=True)) == [2]
