"""Factories and small helpers shared by the test modules.

``TaskFactory`` writes rows directly, for setting up a state a test starts from (a task
already completed, created at a known time...). Tests of a state change itself go through
``taskqueue.store``, the only writer of task state.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model

from taskqueue import store
from taskqueue.models import DeadLetter, Task, TaskStatus
from taskqueue.store.sql import ClaimedTask, db_now
from tests.conftest import wait_for


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    id = factory.LazyFunction(uuid.uuid4)
    task_type = "noop"
    queue = "default"
    payload = factory.LazyFunction(dict)
    status = TaskStatus.PENDING
    priority = 0
    max_attempts = 3
    metadata = factory.LazyFunction(dict)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")


def database_now() -> Any:
    """Return the queue database's clock."""
    return db_now(store.database_alias())


def past(seconds: float = 60) -> Any:
    """Return a database time ``seconds`` ago (a run_at that is due now)."""
    return database_now() - timedelta(seconds=seconds)


def claim(task: Task, worker_id: str = "test-worker") -> ClaimedTask:
    """Claim ``task``, which must be the next due task of its queue, and return the claim."""
    # Polled: on SQLite a run_at of "now" (a retry with no delay) written with microseconds
    # compares after the millisecond clock of the claim until the next millisecond.
    claimed = wait_for(
        lambda: store.claim_due_tasks(worker_id, [task.queue], 1),
        timeout=5,
        message=f"task {task.id} to be claimable",
    )
    assert [c.id for c in claimed] == [task.id], f"expected to claim {task.id}, got {claimed}"
    return claimed[0]


def kill(task: Task, errors: tuple[str, ...] = ("boom",)) -> DeadLetter:
    """Run ``task`` through one failed attempt per error, the last one dead-lettering it."""
    for number, error in enumerate(errors, start=1):
        claimed = claim(task)
        kwargs = {
            "worker_id": "test-worker",
            "error_type": "ValueError",
            "error": error,
            "traceback": f"Traceback {number}: ValueError: {error}",
        }
        if number < len(errors):
            assert store.retry_later(claimed, delay=0, **kwargs)
        else:
            dead = store.dead_letter(claimed, **kwargs)
            assert dead is not None
            return dead
    raise AssertionError("kill() needs at least one error")
