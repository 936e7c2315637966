"""Hard timeouts: handlers stuck in a sleep, a CPU loop or a long query are stopped."""

from __future__ import annotations

import signal
import time

import pytest
from django.db import connection

import taskqueue
from taskqueue.models import AttemptOutcome, DeadLetter, Task, TaskAttempt, TaskStatus
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure

pytestmark = pytest.mark.django_db(transaction=True)


def _pg_sleeps() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
            ["SELECT pg_sleep(600)%"],
        )
        return cursor.fetchone()[0]


def test_hung_handlers_are_stopped_and_others_keep_flowing(start_worker) -> None:
    hung = [taskqueue.enqueue(name) for name in ("hang_sleep", "hang_cpu", "hang_sql")]
    quick = taskqueue.enqueue_many(
        [
            (
                "add",
                {"a": n, "b": 1},
            )
            for n in range(30)
        ],
        queue="hang",
    )
    started = time.monotonic()
    worker = start_worker("--queues", "hang", "--concurrency", "2", "--pool", "processes")
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: (
                Task.objects.filter(task_type__startswith="hang_", status=TaskStatus.FAILED).count()
                == 3
            ),
            timeout=45,
            message="the three hung tasks to be dead-lettered",
        )
        elapsed = time.monotonic() - started
        # Both slots were taken by hung handlers at first: the quick tasks can only have
        # run because the stopped slots came back.
        wait_for(
            lambda: (
                Task.objects.filter(
                    id__in=[t.id for t in quick], status=TaskStatus.COMPLETED
                ).count()
                == 30
            ),
            message="the quick tasks to complete",
        )
        assert worker.poll() is None, "the worker must survive its handlers' timeouts"
    for task in hung:
        task.refresh_from_db()
        dead = DeadLetter.objects.get(task=task)
        assert dead.error_type == "TimeoutError", (task.task_type, dead.error)
        assert dead.error == "timed out after 1 s"
        outcomes = set(TaskAttempt.objects.filter(task=task).values_list("outcome", flat=True))
        assert outcomes == {AttemptOutcome.TIMED_OUT}
    # hang_sql has two attempts: it was retried once, then dead-lettered.
    assert Task.objects.get(task_type="hang_sql").attempts == 2
    # Spawning the children, three one-second timeouts on two slots, and a retry: well
    # under the 600 s the handlers asked for.
    assert elapsed < 40
    if connection.vendor == "postgresql":
        wait_for(lambda: _pg_sleeps() == 0, timeout=10, message="pg_sleep sessions to end")
    worker.send_signal(signal.SIGTERM)
    code, _, stderr = finish_worker(worker)
    assert code == 0, stderr


def test_thread_pool_stops_only_async_handlers(run_worker) -> None:
    task = taskqueue.enqueue("async_slow")
    run_worker("--burst", "--pool", "threads")
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert DeadLetter.objects.get(task=task).error_type == "TimeoutError"
