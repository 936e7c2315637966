"""Benchmark the stats and health views against a large queue on PostgreSQL.

Fills a benchmark database with ``--pending`` due tasks and ``--completed`` finished ones
(plus a realistic sprinkle of scheduled, retrying, running, failed and cancelled tasks,
live workers and an hour of per-minute metrics) with ``INSERT ... SELECT generate_series``,
runs ``VACUUM ANALYZE`` (what autovacuum does on a live queue), then times the stats
computation plus its JSON encoding, and the health verdict, ``--repeat`` times each:

    .venv/bin/python bench/stats.py                               # 1 M pending, 10 M completed
    .venv/bin/python bench/stats.py --pending 100000 --completed 1000000   # quicker
    .venv/bin/python bench/stats.py --reuse        # keep the rows of the previous run

The database (default ``taskqueue_bench_stats``; its name must contain "bench") is dropped
and recreated unless ``--reuse``. Figures are printed, never asserted: see
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import database, machine  # noqa: E402

TYPES = 20
QUEUES = ("default", "emails", "reports", "webhooks")
WORKERS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the stats and health views on a large PostgreSQL queue.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TASKQUEUE_BENCH_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/taskqueue_bench_stats",
        ),
        help="postgres://user:password@host:port/name",
    )
    parser.add_argument("--pending", type=int, default=1_000_000, help="due pending tasks")
    parser.add_argument("--completed", type=int, default=10_000_000, help="completed tasks")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls of each view")
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help=f"live workers, each with a day of per-minute metrics for all {TYPES} task types",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the previous run's rows")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return parser.parse_args(argv)


def progress(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def _insert(cursor, count: int, status: str, extra: str, offset: int) -> None:  # type: ignore[no-untyped-def]
    """Insert ``count`` tasks of ``status``; ``extra`` supplies run_at, started_at,
    completed_at and claimed_by as SQL over ``i`` (the series)."""
    cursor.execute(
        f"""
        INSERT INTO taskqueue_task (
            id, task_type, queue, payload, status, priority, attempts, max_attempts,
            last_error, progress_message, metadata, cancel_requested, has_dependents,
            created_at, updated_at, run_at, started_at, completed_at, claimed_by)
        SELECT lpad(to_hex(i + {offset}), 32, '0')::uuid,
               'bench.type' || (i % {TYPES}),
               (ARRAY{list(QUEUES)!r})[1 + (i % {TYPES}) % {len(QUEUES)}],
               '{{}}'::jsonb, '{status}', (ARRAY[-50, 0, 0, 0, 50])[1 + i % 5],
               1, 3, '', '', '{{}}'::jsonb, false, false,
               now() - interval '1 hour', now(), {extra}
        FROM generate_series(1, {count}) AS i
        """
    )


def fill(pending: int, completed: int, workers: int, started: float) -> None:
    """Rows at scale: indexes dropped during the bulk insert and rebuilt after (as a
    restore does), then VACUUM ANALYZE."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'taskqueue_task' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'taskqueue_task'::regclass)"
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # Completed over the last 10 days; pending due over the last hour.
        offset = 0
        mixes = [
            (
                completed,
                "completed",
                "now() - (i % 864000) * interval '1 second', "
                "now() - (i % 864000) * interval '1 second' - interval '1 second', "
                "now() - (i % 864000) * interval '1 second', NULL",
            ),
            (pending, "pending", "now() - (i % 3600) * interval '1 second', NULL, NULL, NULL"),
            (2000, "scheduled", "now() + (i % 86400) * interval '1 second', NULL, NULL, NULL"),
            (500, "retrying", "now() + (i % 300) * interval '1 second', NULL, NULL, NULL"),
            (
                workers * 4,
                "running",
                f"now() - interval '5 second', now() - interval '2 second', NULL, "
                f"'bench-host:' || (i % {workers})",
            ),
            (5000, "failed", "now() - interval '1 day', NULL, now() - interval '1 day', NULL"),
            (20000, "cancelled", "now() - interval '1 day', NULL, now() - interval '1 day', NULL"),
        ]
        for count, status, extra in mixes:
            progress(started, f"inserting {count:,} {status} tasks")
            _insert(cursor, count, status, extra, offset)
            offset += count
        for name, definition in indexes:
            progress(started, f"building index {name}")
            cursor.execute(definition)
        progress(started, "dead letters, workers, metrics")
        cursor.execute(
            "INSERT INTO taskqueue_deadletter (task_id, task_type, queue, error_type, error, "
            "traceback, attempts, attempts_history, failed_at, reviewed, note) "
            "SELECT id, task_type, queue, 'ValueError', 'boom', '', 3, '[]'::jsonb, "
            "completed_at, (random() < 0.9), '' FROM taskqueue_task WHERE status = 'failed'"
        )
        cursor.execute(
            "INSERT INTO taskqueue_worker (id, hostname, pid, queues, task_types, concurrency, "
            "status, started_at, last_heartbeat, tasks_processed) "
            f"SELECT 'bench-host:' || i, 'bench-host', 1000 + i, %s::jsonb, "
            f"(SELECT jsonb_agg('bench.type' || t) FROM generate_series(0, {TYPES - 1}) t), "
            "4, 'running', now() - interval '1 hour', now() + interval '1 day', 0 "
            f"FROM generate_series(0, {workers - 1}) i",
            [json.dumps(list(QUEUES))],
        )
        histogram = json.dumps([0, 1, 3, 10, 20, 10, 5, 2, 1, 0, 0, 0, 0, 0, 0, 0])
        cursor.execute(
            "INSERT INTO taskqueue_metricsminute (minute, worker_id, task_type, queue, "
            "succeeded, failed, retried, dead_lettered, cancelled, timed_out, run_seconds, "
            "wait_seconds, run_histogram, wait_histogram) "
            "SELECT date_trunc('minute', now()) - m * interval '1 minute', 'bench-host:' || w, "
            f"'bench.type' || t, (ARRAY{list(QUEUES)!r})[1 + mod(t, {len(QUEUES)})], "
            "52, 2, 2, 0, 0, 0, 5.2, 1.1, %s::jsonb, %s::jsonb "
            f"FROM generate_series(0, 1439) m, generate_series(0, {workers - 1}) w, "
            f"generate_series(0, {TYPES - 1}) t",
            [histogram, histogram],
        )
    connection.close()
    progress(started, "VACUUM ANALYZE")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def timed(call, repeat: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    call()  # warm-up: first call pays imports and plan caching
    samples = []
    for _ in range(repeat):
        begun = time.perf_counter()
        call()
        samples.append((time.perf_counter() - begun) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[max(0, round(0.95 * len(samples)) - 1)],
        "max_ms": samples[-1],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    database.configure(args.database_url, None)
    from django.conf import settings
    from django.http import JsonResponse

    # Workers heartbeat in the future above: keep them live however long timing takes.
    settings.TASKQUEUE = {"STALE_AFTER": 86400 * 2}
    if not args.reuse:
        database.recreate()
        fill(args.pending, args.completed, args.workers, started)
    from taskqueue.monitoring import health, stats

    data = stats.collect()
    progress(started, f"counts: {json.dumps(data['counts'])}")
    for note in data["approximate"]:
        progress(started, f"approximate: {note}")
    results = {
        "stats view (collect + JSON)": timed(
            lambda: JsonResponse(stats.collect()).content, args.repeat
        ),
        "health view (verdict + JSON)": timed(
            lambda: JsonResponse(health.check().as_dict()).content, args.repeat
        ),
    }
    from datetime import timedelta

    from taskqueue.monitoring import metrics, queries

    now = queries.sql.db_now(queries.database())
    results["  of which: counts (queue_snapshot)"] = timed(queries.queue_snapshot, args.repeat)
    results["  of which: metrics.window_summaries"] = timed(
        lambda: metrics.window_summaries(now - timedelta(hours=1), now), args.repeat
    )
    verdict = health.check()
    print(f"\n{database.describe()}, {database.server_version()}")
    for name, value in machine.facts(database.describe(), database.server_version()):
        print(f"  {name}: {value}")
    print(f"  rows: {json.dumps(data['counts'])}")
    print(
        f"  health: {verdict.status} ({', '.join(i.code for i in verdict.issues) or 'no issues'})"
    )
    print(f"\n{'measure':38} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   ({args.repeat} calls)")
    for name, figures in results.items():
        print(
            f"{name:38} {figures['p50_ms']:8.1f} {figures['p95_ms']:8.1f} {figures['max_ms']:8.1f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"counts": data["counts"], "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
