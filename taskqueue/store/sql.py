"""The few statements the ORM cannot say in one round trip, per database vendor.

Claiming and completing are the hot path: each is one statement for a whole batch of tasks.
Only ``taskqueue.store`` calls these.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.db import connections
from django.utils.dateparse import parse_datetime

from taskqueue.core.registry import registry
from taskqueue.models import READY_STATES, CircuitState, Task, TaskStatus, TaskType

NOTIFY_CHANNEL = "taskqueue"
_READY = ", ".join(f"'{state.value}'" for state in READY_STATES)
_RUNNING = TaskStatus.RUNNING.value
_COMPLETED = TaskStatus.COMPLETED.value
# Task types under flow control: the main claim leaves them to the gated claim
# (taskqueue.store.flow), which takes each type's row lock and counts its limits. Read in the
# claim statement itself, so a pause or an opened circuit holds from the next claim on.
_GATED_TYPES = (
    f"SELECT name FROM {TaskType._meta.db_table} WHERE paused "
    f"OR circuit_state <> '{CircuitState.CLOSED.value}' OR rate_limit <> '' "
    "OR concurrency_limit IS NOT NULL"
)
_NOW = {
    "postgresql": "statement_timestamp()",
    # SQLite's clock has milliseconds; Django writes microseconds. Padding to six digits
    # keeps text comparison with stored times exact within the same millisecond.
    "sqlite": "(strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now') || '000')",
}


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """What a worker needs to run one claimed task, read straight from the claim."""

    id: uuid.UUID
    task_type: str
    queue: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    retry: dict[str, Any] | None
    timeout: float | None
    lease_id: uuid.UUID
    started_at: datetime | None
    # When it became due (database clock): started_at - run_at is the wait time metric.
    run_at: datetime | None = None


def vendor(using: str) -> str:
    name = connections[using].vendor
    if name not in _NOW:
        raise NotImplementedError(f"taskqueue supports PostgreSQL and SQLite, not {name}")
    return name


def db_now(using: str) -> datetime:
    """Return the database clock as an aware UTC datetime."""
    with connections[using].cursor() as cursor:
        # Parameters given (even none) so both backends unescape the %% in the SQLite clock.
        cursor.execute(f"SELECT {_NOW[vendor(using)]}", [])
        (value,) = cursor.fetchone()
    return _as_datetime(value)


# The columns a worker needs to run a claimed task (also what rescue reads).
CLAIMED_COLUMNS = (
    "id",
    "task_type",
    "queue",
    "payload",
    "priority",
    "attempts",
    "max_attempts",
    "retry",
    "timeout",
    "started_at",
    "run_at",
)


def claim_statement(
    using: str,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease: uuid.UUID,
    task_type: str | None = None,
    served_types: Sequence[str] | None = None,
) -> tuple[str, list[Any]]:
    """Return the claim statement and its parameters (also used to EXPLAIN it in tests).

    Without ``task_type``: every type not under flow control. With it: that type only (the
    gated claim, which has checked the type's limits under its row lock). Either way only
    ``served_types`` (default: the types this process registers) are claimed.
    """
    kind = vendor(using)
    served = list(registry.names() if served_types is None else served_types)
    sql = _claim_sql(kind, len(queues), task_type is not None)
    # The served types travel as one array (PostgreSQL) or one JSON list (SQLite): the
    # statement's text is the same for every claim of a worker, whatever it registers.
    types_param: Any = served if kind == "postgresql" else json.dumps(served)
    pick_params: list[Any] = [*queues, types_param]
    if task_type is not None:
        pick_params.append(task_type)
    if kind == "postgresql":
        return sql, [*pick_params, limit, worker_id, lease]
    return sql, [worker_id, lease.hex, *pick_params, limit]


@lru_cache(maxsize=64)
def _claim_sql(kind: str, queue_count: int, one_type: bool) -> str:
    table = Task._meta.db_table
    now = _NOW[kind]
    placeholders = ", ".join(["%s"] * queue_count)
    served = "= ANY(%s::text[])" if kind == "postgresql" else "IN (SELECT value FROM json_each(%s))"
    type_filter = "AND task_type = %s" if one_type else f"AND task_type NOT IN ({_GATED_TYPES})"
    # One statement: pick due ids in the partial index's order, skip rows another worker is
    # locking right now, and mark them ours. The attempt is counted here, at claim, so a
    # task that kills its worker still runs out of attempts. A type this worker has no
    # handler for stays for a worker that has one (a rolling deploy: newer code registers
    # it), rather than being claimed and dead-lettered here.
    pick = (
        f"SELECT id FROM {table} WHERE status IN ({_READY}) AND run_at <= {now} "
        f"AND queue IN ({placeholders}) AND task_type {served} {type_filter} "
        "ORDER BY priority DESC, run_at, created_at LIMIT %s"
    )
    if kind == "postgresql":
        returning = ", ".join(f"t.{column}" for column in CLAIMED_COLUMNS)
        return (
            f"WITH due AS ({pick} FOR UPDATE SKIP LOCKED) "
            f"UPDATE {table} AS t SET status = '{_RUNNING}', attempts = t.attempts + 1, "
            f"started_at = {now}, updated_at = {now}, claimed_by = %s, lease_id = %s, "
            f"cancel_requested = false FROM due WHERE t.id = due.id RETURNING {returning}"
        )
    # SQLite has one writer at a time: the UPDATE takes the write lock before its subquery
    # reads, so two workers can never pick the same row.
    return (
        f"UPDATE {table} SET status = '{_RUNNING}', attempts = attempts + 1, "
        f"started_at = {now}, updated_at = {now}, claimed_by = %s, lease_id = %s, "
        f"cancel_requested = 0 WHERE id IN ({pick}) RETURNING {', '.join(CLAIMED_COLUMNS)}"
    )


def claim_due(
    using: str, worker_id: str, queues: list[str], limit: int, task_type: str | None = None
) -> list[ClaimedTask]:
    """Mark up to ``limit`` due tasks running for ``worker_id`` and count the attempt.

    Only types this process registers a handler for are claimed: with none, nothing is.
    """
    if limit <= 0 or not queues:
        return []
    served = registry.names()
    if not served or (task_type is not None and task_type not in served):
        return []
    lease = uuid.uuid4()
    sql, params = claim_statement(using, worker_id, queues, limit, lease, task_type, served)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    claimed = [
        ClaimedTask(
            id=_as_uuid(row[0]),
            task_type=row[1],
            queue=row[2],
            payload=_as_json(row[3]),
            priority=row[4],
            attempts=row[5],
            max_attempts=row[6],
            retry=_as_json(row[7]),
            timeout=row[8],
            lease_id=lease,
            started_at=_as_datetime(row[9]) if row[9] is not None else None,
            run_at=_as_datetime(row[10]) if row[10] is not None else None,
        )
        for row in rows
    ]
    # RETURNING does not promise an order; run the batch in claim order.
    claimed.sort(key=lambda task: -task.priority)
    return claimed


# What the gated claim reads of a task type, under the type's lock.
TYPE_CONTROL_COLUMNS = (
    "paused",
    "rate_limit",
    "concurrency_limit",
    "circuit_state",
    "circuit_opened_at",
    "circuit_cooldown",
    "rate_tokens",
    "rate_updated_at",
)


def lock_task_type(using: str, name: str) -> dict[str, Any] | None:
    """Lock ``name``'s TaskType row until the transaction ends; return its flow-control
    columns and the database clock as ``now`` (None when there is no such row).
    """
    kind = vendor(using)
    # A no-op write rather than SELECT ... FOR UPDATE: SQLite has no row locks, but any
    # UPDATE takes its database write lock, and on PostgreSQL it takes the row lock. Either
    # way every other gated claim of this type waits until this transaction ends.
    sql = (
        f"UPDATE {TaskType._meta.db_table} SET paused = paused WHERE name = %s "
        f"RETURNING {', '.join(TYPE_CONTROL_COLUMNS)}, {_NOW[kind]}"
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [name])
        row = cursor.fetchone()
    if row is None:
        return None
    values = dict(zip((*TYPE_CONTROL_COLUMNS, "now"), row, strict=True))
    values["paused"] = bool(values["paused"])
    for column in ("circuit_opened_at", "rate_updated_at", "now"):
        if values[column] is not None:
            values[column] = _as_datetime(values[column])
    return values


@dataclass(frozen=True, slots=True)
class CompletedRow:
    """A task the completion statement marked completed, with what follows from it."""

    id: uuid.UUID
    task_type: str
    has_dependents: bool
    schedule_id: int | None


def complete_batch(
    using: str, completions: list[tuple[uuid.UUID, uuid.UUID, Any]]
) -> list[CompletedRow]:
    """Mark (id, lease, result) triples completed; return the rows whose lease still held."""
    if not completions:
        return []
    kind = vendor(using)
    table = Task._meta.db_table
    now = _NOW[kind]
    if kind == "postgresql":
        values = ", ".join(["(%s::uuid, %s::uuid, %s::jsonb)"] * len(completions))
        sql = (
            f"UPDATE {table} AS t SET status = '{_COMPLETED}', result = v.result, "
            f"completed_at = {now}, updated_at = {now} "
            f"FROM (VALUES {values}) AS v(id, lease_id, result) "
            f"WHERE t.id = v.id AND t.lease_id = v.lease_id AND t.status = '{_RUNNING}' "
            f"RETURNING t.id, t.task_type, t.has_dependents, t.schedule_id"
        )
        params: list[Any] = []
        for task_id, lease, result in completions:
            params += [task_id, lease, _dump(result)]
    else:
        values = ", ".join(["(%s, %s, %s)"] * len(completions))
        sql = (
            f"WITH v(id, lease_id, result) AS (VALUES {values}) "
            f"UPDATE {table} SET status = '{_COMPLETED}', result = v.result, "
            f"completed_at = {now}, updated_at = {now} FROM v "
            f"WHERE {table}.id = v.id AND {table}.lease_id = v.lease_id "
            f"AND {table}.status = '{_RUNNING}' "
            f"RETURNING {table}.id, {table}.task_type, {table}.has_dependents, {table}.schedule_id"
        )
        params = []
        for task_id, lease, result in completions:
            params += [task_id.hex, lease.hex, _dump(result)]
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return [
            CompletedRow(_as_uuid(row[0]), row[1], bool(row[2]), row[3])
            for row in cursor.fetchall()
        ]


def notify(using: str, queues: set[str] | list[str]) -> None:
    """Wake listening workers of ``queues`` (PostgreSQL; delivered when the transaction commits)."""
    if vendor(using) != "postgresql" or not queues:
        return
    with connections[using].cursor() as cursor:
        for queue in sorted(set(queues)):
            cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue])


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            raise ValueError(f"unreadable database timestamp {value!r}")
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
