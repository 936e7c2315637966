"""Task dependencies: hold a new task for its upstream tasks, release it when they complete,
cancel it (and everything below it) when one dies.

A dependent sits in ``waiting`` until every upstream task has completed. Three paths move it:
the completion of an upstream (``release_dependents``, right after the completion), the
death or cancellation of an upstream (``cancel_dependents``, in that transaction), and the
sweep a worker duty runs (``taskqueue.store.waiting_sweep``), the belt for anything a race
left behind. Whole workflows are stored by ``taskqueue.store.workflow_enqueue``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.core.payloads import short_repr
from taskqueue.events import emit
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import Task, TaskDependency, TaskStatus
from taskqueue.store import sql
from taskqueue.store.common import database_alias

# Ids per statement: well under SQLite's bound-parameter limit.
CHUNK = 500

_TASK = Task._meta.db_table
_DEP = TaskDependency._meta.db_table
_WAITING = TaskStatus.WAITING.value
_COMPLETED = TaskStatus.COMPLETED.value
DEAD_STATES = (TaskStatus.FAILED, TaskStatus.CANCELLED)
# A waiting task is ready when no upstream task is anything but completed.
ALL_UPSTREAMS_COMPLETED = (
    f"NOT EXISTS (SELECT 1 FROM {_DEP} AS d JOIN {_TASK} AS u ON u.id = d.depends_on_id "
    f"WHERE d.task_id = {_TASK}.id AND u.status <> '{_COMPLETED}')"
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream task as the enqueueing transaction saw it, under its row lock."""

    id: uuid.UUID
    task_type: str
    status: str
    last_error: str


# --- reasons ---------------------------------------------------------------------------------


def failed_reason(task_id: uuid.UUID, task_type: str, error: str) -> str:
    """The reason a dependent of a dead-lettered task is cancelled with."""
    return f"upstream task {task_id} ({task_type}) failed: {error}"


def cancelled_reason(task_id: uuid.UUID, task_type: str, detail: str = "") -> str:
    """The reason a dependent of a cancelled task is cancelled with."""
    reason = f"upstream task {task_id} ({task_type}) was cancelled"
    # "cancelled" is the default reason of taskqueue.cancel: it adds nothing.
    return f"{reason}: {detail}" if detail and detail != "cancelled" else reason


def reason_for(upstream: Upstream) -> str:
    if upstream.status == TaskStatus.FAILED:
        return failed_reason(upstream.id, upstream.task_type, upstream.last_error)
    return cancelled_reason(upstream.id, upstream.task_type, upstream.last_error)


# --- enqueue side ----------------------------------------------------------------------------


def upstream_ids(depends_on: Any) -> list[uuid.UUID]:
    """Read a ``depends_on`` option (tasks or ids) into distinct ids, in the order given."""
    if depends_on is None:
        return []
    if isinstance(depends_on, str | bytes | Task | uuid.UUID) or not isinstance(
        depends_on, Iterable
    ):
        raise InvalidTaskOption(
            f"depends_on must be a list of tasks or task ids, got {short_repr(depends_on)}"
        )
    # A dict keeps the order given and drops repeats in constant time per id.
    ids: dict[uuid.UUID, None] = {}
    for item in depends_on:
        if isinstance(item, Task):
            task_id = item.id
        elif isinstance(item, uuid.UUID):
            task_id = item
        elif isinstance(item, str):
            try:
                task_id = uuid.UUID(item)
            except ValueError:
                raise InvalidTaskOption(
                    f"depends_on: {short_repr(item)} is not a task id (a UUID)"
                ) from None
        else:
            raise InvalidTaskOption(
                f"depends_on: {short_repr(item)} is not a task or a task id "
                "(a Task, UUID or UUID string)"
            )
        if task_id is None:
            raise InvalidTaskOption(f"depends_on: {short_repr(item)} is a task without an id")
        ids[task_id] = None
    return list(ids)


def hold_for_upstreams(
    using: str, tasks: Sequence[Task], upstreams: Sequence[Sequence[uuid.UUID]]
) -> None:
    """Give new tasks their status from their upstream tasks (call in the enqueue transaction).

    The upstream rows are locked and flagged ``has_dependents`` first, so the statuses read
    are current: a completion blocked on those locks commits after us and then finds our
    dependency rows. All completed: the task keeps its ready status; any failed or cancelled:
    it is created cancelled, naming that upstream; otherwise it waits.
    """
    found = _lock_upstreams(using, sorted({i for ids in upstreams for i in ids}))
    for task, ids in zip(tasks, upstreams, strict=True):
        if not ids:
            continue
        states = [found[i] for i in ids]
        dead = next((u for u in states if u.status in DEAD_STATES), None)
        if dead is not None:
            task.status = TaskStatus.CANCELLED
            task.last_error = reason_for(dead)
            task.completed_at = Now()
        elif any(u.status != TaskStatus.COMPLETED for u in states):
            task.status = TaskStatus.WAITING


def _lock_upstreams(using: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, Upstream]:
    found: dict[uuid.UUID, Upstream] = {}
    postgres = sql.vendor(using) == "postgresql"
    with connections[using].cursor() as cursor:
        for chunk in _chunks(ids):
            marks, params = _in(using, chunk)
            if postgres:
                # In id order, so two enqueuers sharing upstream tasks never deadlock.
                cursor.execute(
                    f"SELECT id FROM {_TASK} WHERE id IN ({marks}) ORDER BY id FOR UPDATE", params
                )
            cursor.execute(
                f"UPDATE {_TASK} SET has_dependents = true WHERE id IN ({marks}) "
                "RETURNING id, task_type, status, last_error",
                params,
            )
            for row in cursor.fetchall():
                upstream = Upstream(sql._as_uuid(row[0]), row[1], row[2], row[3] or "")
                found[upstream.id] = upstream
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise InvalidTaskOption(f"depends_on names unknown task(s): {', '.join(missing)}")
    return found


def link_upstreams(using: str, links: Iterable[tuple[Task, Sequence[uuid.UUID]]]) -> None:
    """Store the dependency rows of newly created tasks (positions in the order given)."""
    rows: list[TaskDependency] = []
    born_cancelled: list[Task] = []
    for task, ids in links:
        rows += [
            TaskDependency(task_id=task.id, depends_on_id=upstream, position=position)
            for position, upstream in enumerate(ids)
        ]
        if task.status == TaskStatus.CANCELLED:
            born_cancelled.append(task)
    TaskDependency.objects.using(using).bulk_create(rows, batch_size=1000)
    if born_cancelled:
        announced = [(t.id, t.task_type, t.queue, t.last_error) for t in born_cancelled]
        transaction.on_commit(lambda: emit_cancelled(announced), using=using)


# --- completion side -------------------------------------------------------------------------


def release_dependents(using: str, upstream_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Make waiting dependents of ``upstream_ids`` ready once all their upstreams completed.

    Called right after the completion (within the handler's transaction for atomic
    handlers). Returns the ids released.
    """
    released: list[uuid.UUID] = []
    for chunk in _chunks(sorted(set(upstream_ids))):
        released += release_waiting(using, _waiting_dependents(using, chunk))
    return released


def _waiting_dependents(
    using: str, upstream_ids: Sequence[uuid.UUID], *, skip_locked: bool = False
) -> list[uuid.UUID]:
    """The waiting dependents of ``upstream_ids``, locked in id order on PostgreSQL.

    The lock is what makes fan-in safe: two completions of the same dependent's upstreams
    take it in turn, and the second one's next statement sees the first one's commit.
    """
    if not upstream_ids:
        return []
    marks, params = _in(using, upstream_ids)
    query = (
        f"SELECT id FROM {_TASK} WHERE status = '{_WAITING}' AND id IN "
        f"(SELECT task_id FROM {_DEP} WHERE depends_on_id IN ({marks})) ORDER BY id"
    )
    if sql.vendor(using) == "postgresql":
        query += " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
    with connections[using].cursor() as cursor:
        cursor.execute(query, params)
        return [sql._as_uuid(row[0]) for row in cursor.fetchall()]


def release_waiting(using: str, task_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Ready those of ``task_ids`` still waiting whose upstream tasks have all completed."""
    if not task_ids:
        return []
    now = sql._NOW[sql.vendor(using)]
    released: list[uuid.UUID] = []
    queues: set[str] = set()
    with connections[using].cursor() as cursor:
        for chunk in _chunks(list(task_ids)):
            marks, params = _in(using, chunk)
            # run_at was fixed at enqueue (its delay counts from then): a dependent released
            # after that time is simply pending, one released before it is scheduled.
            cursor.execute(
                f"UPDATE {_TASK} SET status = CASE WHEN run_at > {now} "
                f"THEN '{TaskStatus.SCHEDULED.value}' ELSE '{TaskStatus.PENDING.value}' END, "
                f"updated_at = {now} "
                f"WHERE id IN ({marks}) AND status = '{_WAITING}' AND {ALL_UPSTREAMS_COMPLETED} "
                "RETURNING id, queue",
                params,
            )
            for task_id, queue in cursor.fetchall():
                released.append(sql._as_uuid(task_id))
                queues.add(queue)
    sql.notify(using, queues)
    return released


# --- failure side ----------------------------------------------------------------------------


def cancel_dependents(using: str, upstream_ids: list[uuid.UUID], reason: str) -> list[uuid.UUID]:
    """Cancel (transitively) the waiting dependents of dead or cancelled upstream tasks.

    Every task cancelled here, however far down, gets ``reason`` (which names the upstream
    task that died). Call inside the transaction that killed the upstream; ``task_cancelled``
    is sent for each once it commits.
    """
    cancelled: list[tuple[uuid.UUID, str, str, str]] = []
    frontier = sorted(set(upstream_ids))
    while frontier:
        level: list[uuid.UUID] = []
        for chunk in _chunks(frontier):
            rows = cancel_waiting(using, _waiting_dependents(using, chunk), reason)
            cancelled += rows
            level += [row[0] for row in rows]
        frontier = sorted(level)
    if cancelled:
        transaction.on_commit(lambda: emit_cancelled(cancelled), using=using)
    return [row[0] for row in cancelled]


def cancel_waiting(
    using: str, task_ids: Sequence[uuid.UUID], reason: str
) -> list[tuple[uuid.UUID, str, str, str]]:
    if not task_ids:
        return []
    now = sql._NOW[sql.vendor(using)]
    rows: list[tuple[uuid.UUID, str, str, str]] = []
    with connections[using].cursor() as cursor:
        for chunk in _chunks(list(task_ids)):
            marks, params = _in(using, chunk)
            cursor.execute(
                f"UPDATE {_TASK} SET status = '{TaskStatus.CANCELLED.value}', last_error = %s, "
                f"completed_at = {now}, updated_at = {now} "
                f"WHERE id IN ({marks}) AND status = '{_WAITING}' RETURNING id, task_type, queue",
                [reason, *params],
            )
            rows += [(sql._as_uuid(r[0]), r[1], r[2], reason) for r in cursor.fetchall()]
    return rows


def cascade_failure(using: str, task_id: uuid.UUID, task_type: str, error: str) -> list[uuid.UUID]:
    """Cancel the dependents of a task just dead-lettered (in that transaction)."""
    if not Task.objects.using(using).filter(id=task_id, has_dependents=True).exists():
        return []
    return cancel_dependents(using, [task_id], failed_reason(task_id, task_type, error))


def cascade_cancellation(using: str, task_id: uuid.UUID, detail: str = "") -> list[uuid.UUID]:
    """Cancel the dependents of a task just cancelled (all of them, or none on error)."""
    task_type = (
        Task.objects.using(using)
        .filter(id=task_id, has_dependents=True)
        .values_list("task_type", flat=True)
        .first()
    )
    if task_type is None:
        return []
    with transaction.atomic(using=using):
        return cancel_dependents(using, [task_id], cancelled_reason(task_id, task_type, detail))


def emit_cancelled(rows: list[tuple[uuid.UUID, str, str, str]]) -> None:
    for task_id, task_type, queue, reason in rows:
        emit(
            signals.task_cancelled,
            name="cancelled",
            task_id=task_id,
            task_type=task_type,
            queue=queue,
            message=reason,
        )


# --- reading ---------------------------------------------------------------------------------


def upstream_results(task_id: uuid.UUID) -> list[Any]:
    """The results of a task's upstream tasks, in the order its ``depends_on`` gave them."""
    return list(
        TaskDependency.objects.using(database_alias())
        .filter(task_id=task_id)
        .order_by("position", "id")
        .values_list("depends_on__result", flat=True)
    )


# --- helpers ---------------------------------------------------------------------------------


def _chunks(ids: Sequence[uuid.UUID]) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _in(using: str, ids: Sequence[uuid.UUID]) -> tuple[str, list[Any]]:
    """Placeholders and parameters for ``id IN (...)`` (SQLite stores UUIDs as hex text)."""
    params: list[Any] = (
        list(ids) if sql.vendor(using) == "postgresql" else [task_id.hex for task_id in ids]
    )
    return ", ".join(["%s"] * len(ids)), params
