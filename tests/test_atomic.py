"""Atomic mode: a handler's writes and its task's completion commit together."""

from __future__ import annotations

import random
import signal
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

import taskqueue
from taskqueue import store
from taskqueue.core.outcome import OutcomeKind
from taskqueue.core.registry import build_spec
from taskqueue.models import Task, TaskStatus, Worker, WorkerStatus
from taskqueue.worker.executor import AsyncRunner, execute
from tests.conftest import finish_worker, wait_for
from tests.testapp.models import LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)


def _run_in_process(task_id) -> str:
    (claimed,) = [t for t in store.claim_due_tasks("here", ["default"], 10) if t.id == task_id]
    outcome, _ = execute(claimed, "here", AsyncRunner(), random.Random(0))
    return outcome.kind


def test_atomic_handler_commits_its_effect_and_completion_together() -> None:
    task = taskqueue.enqueue("atomic_ledger", {"n": 7})
    assert _run_in_process(task.id) == OutcomeKind.COMMITTED
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.COMPLETED, 7)
    assert list(LedgerEntry.objects.values_list("n", flat=True)) == [7]


def test_a_failing_atomic_handler_leaves_no_effect(run_worker) -> None:
    task = taskqueue.enqueue("atomic_then_fail", {"n": 1})
    run_worker("--burst")
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert not LedgerEntry.objects.exists()


def test_a_lost_claim_rolls_back_the_handlers_effect() -> None:
    task = taskqueue.enqueue("atomic_ledger", {"n": 3})
    (claimed,) = store.claim_due_tasks("frozen", ["default"], 1)
    store.release_tasks([claimed])  # what a rescue does to a frozen worker's claim
    outcome, _ = execute(claimed, "frozen", AsyncRunner(), random.Random(0))
    assert outcome.kind == OutcomeKind.LOST
    assert not LedgerEntry.objects.exists()
    task.refresh_from_db()
    assert task.status == TaskStatus.PENDING


def test_atomic_async_handler_is_refused() -> None:
    async def handler() -> None: ...

    with pytest.raises(ImproperlyConfigured, match="async and atomic"):
        build_spec("atomic-async", handler, atomic=True)


def _completed() -> int:
    return Task.objects.filter(status=TaskStatus.COMPLETED).count()


def _registered(process) -> bool:
    return Worker.objects.filter(pid=process.pid, status=WorkerStatus.RUNNING).exists()


@pytest.mark.slow
def test_effects_happen_exactly_once_under_kill_9(start_worker) -> None:
    total = 500
    taskqueue.enqueue_many([("atomic_ledger", {"n": n, "work": 0.003}) for n in range(total)])
    workers = [start_worker("--concurrency", "2") for _ in range(2)]
    rng = random.Random(1)
    kills = 0
    deadline = time.monotonic() + 150
    while _completed() < total:
        assert time.monotonic() < deadline, "the chaos run did not finish in time"
        # The chaos rhythm follows progress: kill once every worker is up and another
        # batch of tasks has completed since the last kill.
        before = _completed()
        wait_for(lambda: all(_registered(w) for w in workers), timeout=30)
        wait_for(lambda b=before: _completed() >= min(b + 40, total), timeout=60)
        if _completed() == total:
            break
        victim = rng.choice(workers)
        victim.kill()  # SIGKILL, mid-transaction or not
        victim.wait(timeout=10)
        kills += 1
        workers[workers.index(victim)] = start_worker("--concurrency", "2")
    ledger = list(LedgerEntry.objects.values_list("n", flat=True))
    print(f"\natomic chaos: {total} tasks, {kills} kills, {len(ledger)} effects")
    assert kills >= 3
    assert sorted(ledger) == list(range(total)), "every effect exactly once"
    for worker in workers:
        wait_for(lambda w=worker: _registered(w), timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert finish_worker(worker)[0] == 0
