"""Benchmark taskqueue: enqueue rates, no-op throughput, pickup latency, worker memory.

Run from the repository root (about 2 to 3 minutes; ``--quick`` under one):

    .venv/bin/python bench/run.py                 # PostgreSQL, database taskqueue_bench
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --sqlite /tmp/taskqueue_bench.sqlite3
    .venv/bin/python bench/run.py --database-url postgres://postgres@127.0.0.1:5432/taskqueue_bench

The benchmark database is dropped, recreated and migrated at every run (its name must
contain "bench"). Without ``--database-url`` the usual PGHOST, PGPORT, PGUSER, PGPASSWORD
and PGDATABASE variables apply. Figures are printed, never asserted: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, sys.path[0] is bench/: put the repository root there instead, so
# "bench" and "taskqueue" import as packages and no bench module shadows the stdlib.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import database, machine, measure  # noqa: E402
from bench.workers import BenchError  # noqa: E402

FULL = {"single": 3000, "bulk": 50000, "tasks": 20000, "latency_samples": 300, "repeat": 3}
QUICK = {"single": 500, "bulk": 10000, "tasks": 5000, "latency_samples": 100, "repeat": 1}
# Without NOTIFY, pickup waits for the poll interval (1 s by default): fewer samples on SQLite.
SQLITE_LATENCY_SAMPLES = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark taskqueue on PostgreSQL (default) or SQLite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="postgres://user:password@host:port/name")
    where.add_argument("--sqlite", metavar="PATH", help="run on this SQLite file instead")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument("--single", type=int, help=f"single enqueues (full: {FULL['single']})")
    parser.add_argument("--bulk", type=int, help=f"tasks via enqueue_many (full: {FULL['bulk']})")
    parser.add_argument("--batch-size", type=int, default=1000, help="enqueue_many batch size")
    parser.add_argument(
        "--tasks", type=int, help=f"no-op tasks per throughput run (full: {FULL['tasks']})"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"runs per throughput figure, median reported (full: {FULL['repeat']})",
    )
    parser.add_argument(
        "--processes", default="1,2", help="worker process counts for throughput, comma-separated"
    )
    parser.add_argument("--concurrency", default="4,16", help="--concurrency values for throughput")
    parser.add_argument(
        "--pool", default="processes,threads", help="worker --pool values for throughput"
    )
    parser.add_argument(
        "--latency-samples",
        type=int,
        help=f"pickup latency samples (full: {FULL['latency_samples']}; "
        f"SQLite: {SQLITE_LATENCY_SAMPLES})",
    )
    parser.add_argument(
        "--latency-gap-ms", type=float, default=20.0, help="pause between latency samples"
    )
    parser.add_argument(
        "--only",
        default="enqueue,throughput,latency",
        help="measurements to run, comma-separated: enqueue, throughput, latency",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline per worker run (s)")
    parser.add_argument(
        "--max-load",
        type=float,
        help="first wait (up to 10 minutes) until the 1-minute load average is below this",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name, default in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.sqlite and args.latency_samples == sizes["latency_samples"]:
        args.latency_samples = min(args.latency_samples, SQLITE_LATENCY_SAMPLES)
    args.processes = [int(n) for n in args.processes.split(",") if n]
    args.concurrency = [int(n) for n in args.concurrency.split(",") if n]
    args.pool = [name for name in args.pool.split(",") if name]
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    return args


def wait_for_quiet(max_load: float, patience: float = 600.0) -> None:
    """Wait until other work on the machine settles, so it skews the figures less."""
    deadline = time.monotonic() + patience
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() > deadline:
            print(f"load average still {load:.2f}; running anyway", file=sys.stderr)
            return
        print(f"load average {load:.2f} >= {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(10)  # the load average itself moves slowly


def progress(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, log_dir: Path) -> list[measure.Row]:
    started = time.monotonic()
    rows: list[measure.Row] = []
    if "enqueue" in args.only:
        progress(started, f"single enqueues: {args.single:,}")
        rows.append(measure.single_enqueues(args.single))
        progress(started, f"enqueue_many: {args.bulk:,}")
        rows.append(measure.bulk_enqueues(args.bulk, args.batch_size))
    if "throughput" in args.only:
        for pool in args.pool:
            for concurrency in args.concurrency:
                for processes in args.processes:
                    progress(
                        started,
                        f"throughput: {args.tasks:,} no-ops, {pool} pool, {processes} "
                        f"worker(s) x concurrency {concurrency}, {args.repeat} run(s)",
                    )
                    runs = [
                        measure.burst_throughput(
                            processes,
                            concurrency,
                            args.tasks,
                            args.batch_size,
                            log_dir,
                            args.timeout,
                            pool,
                        )
                        for _ in range(args.repeat)
                    ]
                    rows.append(measure.median_of(runs))
    if "latency" in args.only:
        progress(started, f"pickup latency: {args.latency_samples:,} samples; then memory")
        rows.extend(
            measure.latency_and_memory(
                args.latency_samples,
                args.latency_gap_ms / 1000,
                args.tasks,
                args.batch_size,
                log_dir,
                args.timeout,
            )
        )
    progress(started, "done")
    return rows


def format_report(header: list[tuple[str, str]], rows: list[measure.Row]) -> str:
    label_width = max(len(label) for label, _ in header)
    lines = ["taskqueue benchmark", ""]
    lines += [f"{label + ':':<{label_width + 1}} {value}" for label, value in header]
    lines.append("")
    columns = [("measure", "value", "notes"), *((r.measure, r.value, r.notes) for r in rows)]
    widths = [max(len(row[i]) for row in columns) for i in range(2)]
    for index, (name, value, notes) in enumerate(columns):
        lines.append(f"{name:<{widths[0]}}  {value:>{widths[1]}}  {notes}".rstrip())
        if index == 0:
            lines.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_load is not None:
        wait_for_quiet(args.max_load)
    database.configure(args.database_url, args.sqlite)
    database.recreate()
    header = machine.facts(database.describe(), database.server_version())
    sizes = (
        f"{args.single:,} single enqueues, {args.bulk:,} bulk, {args.tasks:,} no-ops per "
        f"throughput run (median of {args.repeat}), {args.latency_samples:,} latency samples"
    )
    header.append(("sizes", sizes + (" (--quick)" if args.quick else "")))
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as logs:
        try:
            rows = run(args, Path(logs))
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    header.append(("load average", f"{machine.load_average()} (1, 5, 15 min) at end"))
    print(format_report(header, rows))
    if args.json:
        payload = {
            "header": dict(header[:-1]) | {"load average at end": header[-1][1]},
            "results": [{"measure": r.measure, **r.figures} for r in rows],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
