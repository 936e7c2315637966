"""Store validated enqueue requests: one at a time under an idempotency key, or in batches.

``enqueue_many`` hands over requests that are all valid. They are written in batches of
``BATCH_SIZE`` rows, each batch its own short transaction when the caller has none open, so
on SQLite, where a writer locks the whole database, heartbeats, claims and other enqueues
get the lock between batches instead of waiting for the whole input. The Python work of a
batch (building its rows, encoding JSON) happens before its transaction begins, so the lock
is held only for the insert itself. Inside the caller's ``transaction.atomic()`` the batches
are savepoints of that one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import NOT_PROVIDED, Field
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.events import emit
from taskqueue.models import UNFINISHED_STATES, Task, TaskStatus
from taskqueue.store import dependencies, sql

# Rows per transaction: on SQLite about 50 ms of write lock (a worker's heartbeat or
# claim waits at most that long); large enough that commits cost little on PostgreSQL.
BATCH_SIZE = 2000
# How often enqueue re-reads after losing an idempotency race before giving up.
IDEMPOTENCY_ATTEMPTS = 5
_MICROSECOND = timedelta(microseconds=1)
# Column types whose Python values the database drivers take as they are.
_PLAIN_TYPES = (str, int, float, bool)
_NEEDS_PREP = ("UUIDField", "JSONField", "DateTimeField", "ForeignKey")


@dataclass(slots=True)
class TaskRequest:
    """One validated enqueue: every value checked and ready to be stored as a task row."""

    task_type: str
    queue: str
    payload: dict[str, Any]
    priority: int
    max_attempts: int
    retry: dict[str, Any]
    timeout: float | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    created_by: Any
    run_at: datetime | None
    delay: timedelta | None
    upstream: list[uuid.UUID] | None = None


def save_idempotent(task: Task, using: str) -> Task | None:
    """Insert ``task`` unless an unfinished task holds its key; return that one if so."""
    last_error: IntegrityError | None = None
    for _ in range(IDEMPOTENCY_ATTEMPTS):
        existing = (
            Task.objects.using(using)
            .filter(idempotency_key=task.idempotency_key, status__in=UNFINISHED_STATES)
            .first()
        )
        if existing is not None:
            return existing
        try:
            # The partial unique index decides concurrent inserts; a loser re-reads the winner.
            with transaction.atomic(using=using):
                task.save(force_insert=True, using=using)
            return None
        except IntegrityError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


def emit_enqueued(*tasks: Task) -> None:
    """Announce stored tasks; called on commit, so a rolled-back task is never announced."""
    for task in tasks:
        emit(
            signals.task_enqueued,
            name="enqueued",
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            message=f"enqueued {task.task_type}",
        )


def store_in_batches(using: str, requests: list[TaskRequest]) -> list[Task]:
    """Store ``requests`` (emptied as it goes) in batches; return their tasks in order.

    Outside a transaction each batch commits on its own: if one fails, the batches before
    it stay stored, and the error carries a note saying which items those are.
    """
    own_transactions = not connections[using].in_atomic_block
    total = len(requests)
    result: list[Task] = []
    last_arrival: datetime | None = None
    while requests:
        # Taken off the list as they go, so the requests of stored batches can be freed.
        batch = requests[:BATCH_SIZE]
        del requests[:BATCH_SIZE]
        try:
            tasks, last_arrival = _store_batch(using, batch, last_arrival)
        except Exception as exc:
            if own_transactions and result:
                exc.add_note(
                    f"enqueue_many: items 0 to {len(result) - 1} were stored (committed in "
                    f"earlier batches); items {len(result)} to {total - 1} were not"
                )
            raise
        result += tasks
    return result


def _store_batch(
    using: str, batch: Sequence[TaskRequest], last_arrival: datetime | None
) -> tuple[list[Task], datetime]:
    now = sql.db_now(using)
    # Arrival order is the claim's last tie-break: keep it across batches even when the
    # database clock (milliseconds on SQLite) has not moved past the last batch's stamps.
    first = now if last_arrival is None or now > last_arrival else last_arrival + _MICROSECOND
    tasks = [
        _new_task(request, first + offset * _MICROSECOND, now)
        for offset, request in enumerate(batch)
    ]
    linked = [(task, r.upstream) for task, r in zip(tasks, batch, strict=True) if r.upstream]
    plain = [task for task in tasks if task.idempotency_key is None]
    connection = connections[using]
    # Built before the transaction so the write lock covers only the insert; tasks that
    # wait on others get their status from their upstream tasks inside it.
    rows = [] if linked else _rows(plain, connection)
    created: list[Task] = []
    with transaction.atomic(using=using):
        if linked:
            dependencies.hold_for_upstreams(
                using, [t for t, _ in linked], [ids for _, ids in linked]
            )
            for task, _ in linked:
                if isinstance(task.completed_at, Now):
                    task.completed_at = now
            rows = _rows(plain, connection)
        _insert(connection, rows)
        stored: list[Task] = []
        for task in tasks:
            if task.idempotency_key is not None:
                existing = save_idempotent(task, using)
                if existing is not None:
                    stored.append(existing)
                    continue
            created.append(task)
            stored.append(task)
        if linked:
            new = {id(task) for task in created}
            dependencies.link_upstreams(using, [(t, ids) for t, ids in linked if id(t) in new])
        transaction.on_commit(lambda: emit_enqueued(*created), using=using)
    for task in plain:
        task._state.adding = False
        task._state.db = using
    return stored, tasks[-1].created_at


@dataclass(frozen=True)
class _Layout:
    """Where each value goes in ``Task(*values)``, and which columns the insert writes."""

    fields: tuple[Field, ...]
    defaults: tuple[Any, ...]
    slot: dict[str, int]
    # Defaults computed per task: callables, and database defaults left to the database.
    fresh: tuple[tuple[int, Field], ...]
    columns: tuple[Field, ...]


# What _new_task sets; every other column gets its model default.
_SET_HERE = frozenset(
    {
        "id",
        "task_type",
        "queue",
        "payload",
        "status",
        "priority",
        "run_at",
        "max_attempts",
        "retry",
        "timeout",
        "idempotency_key",
        "created_by_id",
        "metadata",
        "created_at",
        "updated_at",
    }
)


@cache
def _layout() -> _Layout:
    fields = tuple(Task._meta.concrete_fields)

    def left_to_database(field: Field) -> bool:
        return field.attname not in _SET_HERE and field.db_default is not NOT_PROVIDED

    def per_task(field: Field) -> bool:
        return field.attname not in _SET_HERE and (
            left_to_database(field) or callable(field.default)
        )

    return _Layout(
        fields=fields,
        defaults=tuple(
            None if f.attname in _SET_HERE or per_task(f) else f.get_default() for f in fields
        ),
        slot={f.attname: i for i, f in enumerate(fields)},
        fresh=tuple((i, f) for i, f in enumerate(fields) if per_task(f)),
        columns=tuple(f for f in fields if not left_to_database(f)),
    )


def _new_task(request: TaskRequest, arrival: datetime, now: datetime) -> Task:
    """Build the unsaved task of ``request``; positional arguments are Django's fast path."""
    layout = _layout()
    slot = layout.slot
    values = list(layout.defaults)
    if request.run_at is not None:
        status, run_at = TaskStatus.SCHEDULED.value, request.run_at
    elif request.delay is not None:
        status, run_at = TaskStatus.SCHEDULED.value, now + request.delay
    else:
        # Due now, every one of them: arrival order lives in created_at (the claim's last
        # tie-break), not in run_at, or a claim in the same millisecond would see only some.
        status, run_at = TaskStatus.PENDING.value, now
    user = request.created_by
    values[slot["id"]] = uuid.uuid4()
    values[slot["task_type"]] = request.task_type
    values[slot["queue"]] = request.queue
    values[slot["payload"]] = request.payload
    values[slot["status"]] = status
    values[slot["priority"]] = request.priority
    values[slot["run_at"]] = run_at
    values[slot["max_attempts"]] = request.max_attempts
    # Each task its own copy: the request shares one dict per handler.
    values[slot["retry"]] = dict(request.retry)
    values[slot["timeout"]] = request.timeout
    values[slot["idempotency_key"]] = request.idempotency_key
    values[slot["created_by_id"]] = None if user is None else user.pk
    values[slot["metadata"]] = request.metadata
    values[slot["created_at"]] = values[slot["updated_at"]] = arrival
    for index, field in layout.fresh:
        values[index] = field.get_default()
    task = Task(*values)
    if user is not None:
        task.created_by = user  # caches the user, as Task(created_by=user) does
    return task


def _rows(tasks: Sequence[Task], connection: Any) -> list[list[Any]]:
    """The column values of ``tasks`` as the database driver takes them."""
    columns = _columns()
    rows = []
    for task in tasks:
        state = task.__dict__
        row = []
        for attname, prep, always in columns:
            value = state[attname]
            # str, int, float and bool go to the driver as they are, as Django would send
            # them; anything else (UUIDs, dicts, times, str enums) through Django's conversion.
            if value is not None and (always or type(value) not in _PLAIN_TYPES):
                if hasattr(value, "resolve_expression"):
                    raise TypeError(f"cannot bulk insert the expression {value!r} ({attname})")
                value = prep(value, connection)
            row.append(value)
        rows.append(row)
    return rows


def _columns() -> list[tuple[str, Callable[[Any, Any], Any], bool]]:
    """Per column: its attribute, Django's conversion, and whether every value needs it."""
    return [
        (f.attname, f.get_db_prep_save, f.get_internal_type() in _NEEDS_PREP)
        for f in _layout().columns
    ]


def _insert(connection: Any, rows: list[list[Any]]) -> None:
    """Insert ``rows`` (the layout's columns) in one statement where the driver can."""
    if not rows:
        return
    fields = _layout().columns
    quote = connection.ops.quote_name
    table = quote(Task._meta.db_table)
    columns = ", ".join(quote(f.column) for f in fields)
    with connection.cursor() as cursor:
        copy = getattr(cursor.cursor, "copy", None) if connection.vendor == "postgresql" else None
        if copy is not None:
            # COPY is psycopg's fastest path, and one statement: the NOTIFY trigger fires
            # once per batch (per queue), as for a multi-row INSERT.
            with copy(f"COPY {table} ({columns}) FROM STDIN") as stream:
                for row in rows:
                    stream.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(fields))
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
