"""A circuit breaker spends no attempt past its threshold that it could have saved.

Tasks claimed ahead of a circuit that opens (prefetched, or held back by the pool after a
failure) go back to the queue with their attempt given back, in this worker and in others.
"""

from __future__ import annotations

from typing import Any

import pytest

import taskqueue
from taskqueue.models import CircuitState, Task, TaskAttempt, TaskStatus, TaskType
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure

THRESHOLD = 3


def _settled() -> bool:
    """The circuit is open and no task of it runs or waits in a worker's hands."""
    opened = TaskType.objects.filter(
        name="overshoot_fail", circuit_state=CircuitState.OPEN
    ).exists()
    return opened and not Task.objects.filter(status=TaskStatus.RUNNING).exists()


def _stop(*workers: Any) -> str:
    logs = []
    for worker in workers:
        worker.terminate()
        code, _, log = finish_worker(worker)
        assert code == 0, log
        logs.append(log)
    return "\n".join(logs)


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_one_slot_spends_exactly_the_threshold(start_worker: Any, pool: str) -> None:
    taskqueue.enqueue_many([("overshoot_fail", {"n": n}) for n in range(12)])
    worker = start_worker("--queues", "breaker", "--concurrency", "1", "--pool", pool)
    with worker_stderr_on_failure(worker):
        wait_for(_settled, message="the circuit to open and the worker to hand back the rest")
        assert TaskAttempt.objects.count() == THRESHOLD
        # The rest never started: back in the queue, no attempt spent.
        waiting = Task.objects.exclude(status=TaskStatus.FAILED)
        assert waiting.count() == 12 - THRESHOLD
        assert set(waiting.values_list("status", "attempts")) == {(TaskStatus.PENDING, 0)}
    _stop(worker)


def test_two_workers_hand_back_what_they_claimed_ahead(start_worker: Any) -> None:
    taskqueue.enqueue_many([("overshoot_fail", {"n": n, "seconds": 0.2}) for n in range(30)])
    workers = [
        start_worker("--queues", "breaker", "--concurrency", "3", "--pool", "threads")
        for _ in range(2)
    ]
    with worker_stderr_on_failure(*workers):
        wait_for(_settled, message="the circuit to open and both workers to hand back the rest")
        spent = TaskAttempt.objects.count()
        # Only the slots already running when the third failure was recorded may add to it.
        assert THRESHOLD <= spent <= THRESHOLD + 6 - 1
        assert Task.objects.filter(status=TaskStatus.FAILED).count() == spent
        waiting = Task.objects.exclude(status=TaskStatus.FAILED)
        assert set(waiting.values_list("status", "attempts")) == {(TaskStatus.PENDING, 0)}
    _stop(*workers)
