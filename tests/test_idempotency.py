"""Idempotency keys: one unfinished task per key, even with many callers at the same moment."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

import taskqueue
from taskqueue import store
from taskqueue.models import Task, TaskStatus
from tests.factories import claim, kill

pytestmark = pytest.mark.django_db(transaction=True)

CALLERS = 50


def enqueue_from_many_threads(key: str, callers: int = CALLERS) -> tuple[list[uuid.UUID], list]:
    """Have ``callers`` threads enqueue with ``key`` at the same moment; return ids and errors."""
    barrier = threading.Barrier(callers)
    ids: list[uuid.UUID] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            barrier.wait(timeout=30)
            task = taskqueue.enqueue("echo", {"value": key}, idempotency_key=key)
            with lock:
                ids.append(task.id)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call, name=f"enqueue-{n}") for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an enqueueing thread hung"
    return ids, errors


def test_concurrent_callers_with_one_key_get_one_task() -> None:
    ids, errors = enqueue_from_many_threads("welcome-42")
    assert errors == []
    assert len(ids) == CALLERS
    task = Task.objects.get()
    assert task.idempotency_key == "welcome-42"
    assert task.status == TaskStatus.PENDING
    assert set(ids) == {task.id}

    # Once that task has finished, the key is free again: a new task is created.
    claimed = claim(task)
    assert store.complete_tasks([(claimed, None)]) == {task.id}
    again = taskqueue.enqueue("echo", {"value": "again"}, idempotency_key="welcome-42")
    assert again.id != task.id
    assert Task.objects.count() == 2
    assert Task.objects.get(id=again.id).status == TaskStatus.PENDING
    assert Task.objects.get(id=task.id).status == TaskStatus.COMPLETED


def test_sequential_enqueue_returns_the_unfinished_task() -> None:
    first = taskqueue.enqueue("echo", {"value": 1}, idempotency_key="k")
    second = taskqueue.enqueue("echo", {"value": 2}, idempotency_key="k")
    assert second.id == first.id
    # The existing task is returned as stored: the second payload is not applied.
    assert second.payload == {"value": 1}
    assert Task.objects.count() == 1


def test_different_keys_and_no_key_create_separate_tasks() -> None:
    a = taskqueue.enqueue("noop", idempotency_key="a")
    b = taskqueue.enqueue("noop", idempotency_key="b")
    c = taskqueue.enqueue("noop")
    d = taskqueue.enqueue("noop")
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert Task.objects.count() == 4


@pytest.mark.parametrize("state", ["scheduled", "retrying", "running"])
def test_every_unfinished_state_holds_the_key(state: str) -> None:
    task = taskqueue.enqueue("noop", idempotency_key="held")
    if state == "scheduled":
        Task.objects.filter(id=task.id).update(status=TaskStatus.SCHEDULED)
    elif state == "retrying":
        claimed = claim(task)
        assert store.retry_later(
            claimed, worker_id="w", delay=3600, error_type="E", error="e", traceback=""
        )
    else:
        claim(task)
    assert Task.objects.get(id=task.id).status == state
    assert taskqueue.enqueue("noop", idempotency_key="held").id == task.id
    assert Task.objects.count() == 1


def test_cancelled_and_failed_tasks_free_the_key() -> None:
    cancelled = taskqueue.enqueue("noop", idempotency_key="k")
    assert taskqueue.cancel(cancelled) is True
    dead = taskqueue.enqueue("noop", idempotency_key="k")
    assert dead.id != cancelled.id
    kill(dead)
    fresh = taskqueue.enqueue("noop", idempotency_key="k")
    assert fresh.id not in {cancelled.id, dead.id}
    assert sorted(Task.objects.values_list("status", flat=True)) == [
        TaskStatus.CANCELLED,
        TaskStatus.FAILED,
        TaskStatus.PENDING,
    ]
