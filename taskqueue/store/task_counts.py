"""The raw SQL that counts tasks for the monitoring views (``taskqueue.monitoring.queries``
and ``taskqueue.monitoring.unserved``).

Everything here reads; nothing writes. Each function runs one statement and returns its
rows; how they are combined into the stats (exact counts, planner estimates, block samples)
is decided in ``taskqueue.monitoring``. The loose index scans (``WITH RECURSIVE``) list the
distinct task types or priorities one index probe each, so a count never scans the table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import connections

from taskqueue.models import READY_STATES, Task
from taskqueue.store.common import database_alias
from taskqueue.store.sql import db_now, vendor

_READY = tuple(str(status) for status in READY_STATES)
# Inlined as constants where the statement must match the partial ``due`` index.
_READY_LITERALS = ", ".join(f"'{status}'" for status in _READY)


def as_datetime(value: Any) -> datetime | None:
    """A timestamp read through a raw cursor (SQLite returns text) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _task_types_cte(table: str) -> str:
    """``types(name)``: each distinct task type once, read by a loose scan of the
    (task_type, status) index, one index probe per type instead of a scan of every row."""
    return (
        "WITH RECURSIVE types(name) AS ("
        f"(SELECT task_type FROM {table} ORDER BY task_type LIMIT 1) "
        f"UNION ALL SELECT (SELECT task_type FROM {table} WHERE task_type > types.name "
        "ORDER BY task_type LIMIT 1) FROM types WHERE types.name IS NOT NULL)"
    )


def grouped_counts(using: str, now: datetime) -> list[tuple[Any, ...]]:
    """(task type, queue, status, count, due, oldest due run_at) of every group, counted
    exactly in one scan (SQLite, and small tables)."""
    table = Task._meta.db_table
    ready = ", ".join(["%s"] * len(_READY))
    statement = (
        f"SELECT task_type, queue, status, COUNT(*), "
        f"SUM(CASE WHEN status IN ({ready}) AND run_at <= %s THEN 1 ELSE 0 END), "
        f"MIN(CASE WHEN status IN ({ready}) AND run_at <= %s THEN run_at END) "
        f"FROM {table} GROUP BY task_type, queue, status"
    )
    at = connections[using].ops.adapt_datetimefield_value(now)
    with connections[using].cursor() as cursor:
        cursor.execute(statement, [*_READY, at, *_READY, at])
        return cursor.fetchall()


def status_statistics(using: str) -> tuple[Any, ...] | None:
    """PostgreSQL's statistics of the task table: (reltuples, relpages, current pages,
    most common statuses, their frequencies); None when the table is unknown."""
    table = Task._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.reltuples, c.relpages, "
            "pg_relation_size(c.oid) / current_setting('block_size')::int, "
            "s.most_common_vals::text::text[], s.most_common_freqs "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stats s ON s.schemaname = n.nspname "
            "AND s.tablename = c.relname AND s.attname = 'status' "
            "WHERE c.oid = %s::regclass",
            [table],
        )
        return cursor.fetchone()


def capped_type_status_counts(using: str, statuses: list[str], limit: int) -> list[tuple[Any, ...]]:
    """(task type, status, count up to ``limit``, statement time) for every task type and
    each of ``statuses``, counted through the (task_type, status) index (PostgreSQL)."""
    table = Task._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"""
            {_task_types_cte(table)}
            SELECT types.name, st.status,
                   (SELECT count(*) FROM (SELECT 1 FROM {table} t
                        WHERE t.task_type = types.name AND t.status = st.status
                        LIMIT %s) capped),
                   statement_timestamp()
            FROM types CROSS JOIN unnest(%s::text[]) AS st(status)
            WHERE types.name IS NOT NULL
            """,
            [limit, statuses],
        )
        return cursor.fetchall()


def group_counts(using: str, keys: list[tuple[str, str]], now: datetime) -> list[tuple[Any, ...]]:
    """(task type, queue, status, count, due, oldest due run_at) of the (type, status)
    ``keys``, counted exactly (PostgreSQL)."""
    table = Task._meta.db_table
    pairs = ", ".join(["(%s, %s)"] * len(keys))
    ready = ", ".join(["%s"] * len(_READY))
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT task_type, queue, status, count(*), "
            f"count(*) FILTER (WHERE status IN ({ready}) AND run_at <= %s), "
            f"min(run_at) FILTER (WHERE status IN ({ready}) AND run_at <= %s) "
            f"FROM {table} WHERE (task_type, status) IN ({pairs}) "
            "GROUP BY task_type, queue, status",
            [*_READY, now, *_READY, now, *[value for key in keys for value in key]],
        )
        return cursor.fetchall()


def sample_groups(
    using: str, now: datetime, percent: float, statuses: list[str]
) -> list[tuple[Any, ...]]:
    """(task type, queue, status, count, due) of a ``percent`` block sample of the tasks in
    ``statuses`` (PostgreSQL ``TABLESAMPLE SYSTEM``)."""
    table = Task._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT task_type, queue, status, count(*), count(*) FILTER (WHERE run_at <= %s) "
            f"FROM {table} TABLESAMPLE SYSTEM (%s) WHERE status = ANY(%s) "
            "GROUP BY task_type, queue, status",
            [now, percent, statuses],
        )
        return cursor.fetchall()


def due_of_types_served_nowhere(
    using: str, served_types: list[str], limit: int
) -> dict[tuple[str, str], int]:
    """Due tasks per (type, queue) of the task types not in ``served_types``, each type
    counted through the (task_type, status) index up to ``limit`` (PostgreSQL)."""
    table = Task._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"""
            {_task_types_cte(table)}
            SELECT types.name, due.queue, count(*)
            FROM types CROSS JOIN LATERAL (
                SELECT queue FROM {table} t
                WHERE t.task_type = types.name AND t.status IN ({_READY_LITERALS})
                AND t.run_at <= statement_timestamp()
                LIMIT %s
            ) due
            WHERE types.name IS NOT NULL AND NOT types.name = ANY(%s::text[])
            GROUP BY types.name, due.queue
            """,
            [limit, served_types],
        )
        return {(name, queue): count for name, queue, count in cursor.fetchall()}


def oldest_due_at(
    using: str | None = None, queue: str | None = None, task_type: str | None = None
) -> datetime | None:
    """run_at of the task that has been due the longest (None: nothing due).

    Walks the partial ``due`` index once per priority (a loose index scan) on PostgreSQL;
    with a queue or type filter each walk reads due rows until the first match.
    """
    using = using or database_alias()
    table = Task._meta.db_table
    ready = _READY_LITERALS
    filters, params = "", []
    if queue is not None:
        filters += " AND queue = %s"
        params.append(queue)
    if task_type is not None:
        filters += " AND task_type = %s"
        params.append(task_type)
    with connections[using].cursor() as cursor:
        if vendor(using) != "postgresql":
            at = connections[using].ops.adapt_datetimefield_value(db_now(using))
            cursor.execute(
                f"SELECT MIN(run_at) FROM {table} WHERE status IN ({ready}) "
                f"AND run_at <= %s{filters}",
                [at, *params],
            )
            return as_datetime(cursor.fetchone()[0])
        cursor.execute(
            f"""
            WITH RECURSIVE priorities(p) AS (
                (SELECT priority FROM {table} WHERE status IN ({ready})
                 ORDER BY priority DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT priority FROM {table} WHERE status IN ({ready})
                        AND priority < priorities.p ORDER BY priority DESC LIMIT 1)
                FROM priorities WHERE priorities.p IS NOT NULL
            )
            SELECT min(first.run_at) FROM priorities CROSS JOIN LATERAL (
                SELECT run_at FROM {table} WHERE status IN ({ready})
                AND priority = priorities.p AND run_at <= statement_timestamp(){filters}
                ORDER BY priority DESC, run_at LIMIT 1
            ) first
            WHERE priorities.p IS NOT NULL
            """,
            params,
        )
        return as_datetime(cursor.fetchone()[0])
