"""Several claimers, each with its own connection, on one queue: every task exactly once."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

import taskqueue
from taskqueue import store
from taskqueue.models import Task, TaskStatus

TASKS = 1000
CLAIMERS = 4
BATCH = 7


@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_take_every_task_exactly_once() -> None:
    created = taskqueue.enqueue_many(
        [("echo", {"value": n}) for n in range(TASKS)], queue="crowded"
    )
    taskqueue.enqueue("noop", queue="elsewhere")
    all_ids = {task.id for task in created}
    assert len(all_ids) == TASKS

    barrier = threading.Barrier(CLAIMERS)
    claimed: list[list[uuid.UUID]] = [[] for _ in range(CLAIMERS)]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            while batch := store.claim_due_tasks(f"claimer-{index}", ["crowded"], BATCH):
                assert len(batch) <= BATCH
                claimed[index].extend(task.id for task in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a claimer hung"
    assert errors == []

    sets = [set(ids) for ids in claimed]
    for index, ids in enumerate(claimed):
        assert len(ids) == len(sets[index]), f"claimer {index} got a task twice"
    for i in range(CLAIMERS):
        for j in range(i + 1, CLAIMERS):
            assert sets[i].isdisjoint(sets[j]), f"claimers {i} and {j} share tasks"
    assert set().union(*sets) == all_ids
    assert sum(len(ids) for ids in claimed) == TASKS

    rows = Task.objects.filter(queue="crowded")
    assert rows.filter(status=TaskStatus.RUNNING, attempts=1).count() == TASKS
    owners = dict(rows.values_list("id", "claimed_by"))
    for index, ids in enumerate(claimed):
        assert {owners[task_id] for task_id in ids} <= {f"claimer-{index}"}
    assert Task.objects.get(queue="elsewhere").status == TaskStatus.PENDING
