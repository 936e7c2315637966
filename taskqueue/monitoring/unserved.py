"""Due work no live worker will claim: the stats' ``unserved_work`` and the health's
``no_worker`` issue.

A worker claims only the task types it has a handler for, on the queues it serves. In a
rolling deploy, tasks of a type only the newer code registers therefore wait, pending, for
a worker running that code, while the older workers go on with the rest. This names those
(type, queue) pairs and says why each waits: no live worker serves the queue at all, or the
workers serving it have no handler for the type.

Everything here reads; nothing writes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from taskqueue import store
from taskqueue.models import READY_STATES
from taskqueue.monitoring.queries import GROUP_EXACT_LIMIT, QueueSnapshot
from taskqueue.store import task_counts

QUEUE_NOT_SERVED = "queue_not_served"
TYPE_NOT_REGISTERED = "type_not_registered"
_READY = tuple(str(status) for status in READY_STATES)


def unserved_work(
    snapshot: QueueSnapshot, workers: list[dict[str, Any]], using: str | None = None
) -> list[dict[str, Any]]:
    """(type, queue) pairs with due tasks that no live worker serves, how many are due, why
    (``reason``) and which live workers serve the queue (``queue_workers``).

    Pass ``using`` to count, on PostgreSQL, the types that no live worker serves on any queue
    exactly when the snapshot estimated the ready states: a rare type can escape the block
    sample the estimate is split by.
    """
    served = {
        (task_type, queue)
        for worker in workers
        for task_type in worker["task_types"]
        for queue in worker["queues"]
    }
    on_queue: dict[str, list[str]] = defaultdict(list)
    for worker in workers:
        for queue in worker["queues"]:
            on_queue[queue].append(worker["id"])
    due = snapshot.due_groups()
    if using is not None and snapshot.approximate_statuses & set(_READY):
        served_types = sorted({task_type for task_type, _ in served})
        for key, count in _due_of_types_served_nowhere(using, served_types).items():
            due[key] = max(due.get(key, 0), count)
    return [
        {
            "task_type": task_type,
            "queue": queue,
            "due": count,
            "reason": TYPE_NOT_REGISTERED if on_queue.get(queue) else QUEUE_NOT_SERVED,
            "queue_workers": sorted(on_queue.get(queue, [])),
        }
        for (task_type, queue), count in sorted(due.items())
        if count and (task_type, queue) not in served
    ]


def describe(item: dict[str, Any]) -> str:
    """Say in words why the due tasks of an ``unserved_work`` item wait."""
    waiting = f"{item['due']} due {item['task_type']!r} tasks in queue {item['queue']!r}"
    if item.get("reason") != TYPE_NOT_REGISTERED:
        return f"{waiting} and no live worker serves them"
    workers = item.get("queue_workers") or []
    return (
        f"{waiting} and no live worker serves them: the {len(workers)} live worker(s) on that "
        f"queue have no handler registered for {item['task_type']!r} (a type from code not "
        "deployed to them yet, or a handler removed), so they leave these tasks pending"
    )


def _due_of_types_served_nowhere(using: str, served_types: list[str]) -> dict[tuple[str, str], int]:
    """Due tasks per (type, queue) of the types no live worker serves, each type counted
    through the (task_type, status) index up to GROUP_EXACT_LIMIT (PostgreSQL)."""
    if store.vendor(using) != "postgresql":
        return {}
    return task_counts.due_of_types_served_nowhere(using, served_types, GROUP_EXACT_LIMIT)
