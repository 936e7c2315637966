"""The benchmark's database: point Django at it, recreate it, fill it, and read results."""

from __future__ import annotations

import os
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "bench.settings"


def configure(database_url: str | None, sqlite_path: str | None) -> None:
    """Select the database through the environment (workers inherit it) and set up Django."""
    if sqlite_path:
        os.environ["TASKQUEUE_BENCH_SQLITE"] = str(Path(sqlite_path).resolve())
        os.environ.pop("TASKQUEUE_BENCH_DATABASE_URL", None)
    else:
        os.environ.pop("TASKQUEUE_BENCH_SQLITE", None)
        if database_url:
            os.environ["TASKQUEUE_BENCH_DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    import django

    django.setup()


def vendor() -> str:
    from django.db import connection

    return connection.vendor


def name() -> str:
    from django.db import connection

    return str(connection.settings_dict["NAME"])


def backend_pid() -> int:
    """The process id of our own PostgreSQL session."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return int(pid)


def describe() -> str:
    """Say which database the benchmark uses, without the password."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"SQLite file {settings['NAME']}"
    return f"PostgreSQL database {settings['NAME']} at {settings['HOST']}:{settings['PORT']}"


def server_version() -> str:
    from django.db import connection

    if connection.vendor == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (version,) = cursor.fetchone()
    return f"PostgreSQL {version}"


def recreate() -> None:
    """Drop and create the benchmark database, then migrate it, so every run starts clean."""
    from django.core.management import call_command
    from django.db import connection

    settings = connection.settings_dict
    name = str(settings["NAME"])
    # The benchmark drops its database at start: never let a typo point that at real data.
    if "bench" not in Path(name).name:
        raise SystemExit(
            f"refusing to drop database {name!r}: the benchmark database's name must "
            "contain 'bench' (it is dropped and recreated at every run)"
        )
    connection.close()
    if connection.vendor == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=settings["HOST"],
            port=settings["PORT"],
            user=settings["USER"],
            password=settings["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    call_command("migrate", verbosity=0, interactive=False)


def clear_tasks() -> None:
    """Empty every taskqueue table, so each measurement sees only its own tasks."""
    from django.db import connection, transaction

    tables = [t for t in connection.introspection.table_names() if t.startswith("taskqueue_")]
    quoted = [connection.ops.quote_name(t) for t in tables]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(quoted)} CASCADE")
        else:
            # Foreign keys are deferred on SQLite: the order of deletes does not matter.
            for table in quoted:
                cursor.execute(f"DELETE FROM {table}")


def analyze() -> None:
    """Refresh planner statistics, as autovacuum would on a queue that has been running."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def preload(task_type: str, count: int, batch_size: int) -> float:
    """Enqueue ``count`` payload-less tasks with ``enqueue_many``; return the seconds it took."""
    import time

    import taskqueue

    started = time.perf_counter()
    remaining = count
    while remaining > 0:
        size = min(batch_size, remaining)
        taskqueue.enqueue_many([(task_type, {})] * size)
        remaining -= size
    return time.perf_counter() - started


def completed_span(task_type: str) -> tuple[int, datetime | None, datetime | None]:
    """Completed tasks of ``task_type``, the first claim time and the last completion time."""
    from django.db.models import Count, Max, Min

    from taskqueue.models import Task

    span = Task.objects.filter(task_type=task_type, status="completed").aggregate(
        count=Count("id"), first=Min("started_at"), last=Max("completed_at")
    )
    return span["count"], span["first"], span["last"]


def count_tasks(task_type: str, status: str | None = None) -> int:
    from taskqueue.models import Task

    tasks = Task.objects.filter(task_type=task_type)
    if status is not None:
        tasks = tasks.filter(status=status)
    return tasks.count()


def listening_sessions() -> int:
    """PostgreSQL sessions of this database whose last statement was ``LISTEN``."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query ILIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    return int(count)


def committed_transactions() -> int:
    """Transactions committed in this PostgreSQL database so far, by every session."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        (count,) = cursor.fetchone()
    return int(count)


def other_sessions() -> int:
    """PostgreSQL sessions of this database other than ours (a gone session has flushed stats)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    return int(count)
