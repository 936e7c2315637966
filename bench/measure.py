"""The measurements. Each one starts from empty task tables and returns rows for the table."""

from __future__ import annotations

import math
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import database
from bench.workers import (
    BenchError,
    memory_mib,
    require_clean_exit,
    start_worker,
    wait_for_exit,
    wait_until,
)

# Stamps sent before the measured ones: the first task of a process pays one-off costs.
LATENCY_WARMUP = 3


@dataclass(frozen=True)
class Row:
    """One line of the results table, and its figures for --json."""

    measure: str
    value: str
    notes: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def single_enqueues(count: int) -> Row:
    """``taskqueue.enqueue`` called ``count`` times in autocommit: one transaction each."""
    import taskqueue

    database.clear_tasks()
    started = time.perf_counter()
    for _ in range(count):
        taskqueue.enqueue("noop")
    seconds = time.perf_counter() - started
    rate = count / seconds
    return Row(
        "enqueue, one call per task (autocommit)",
        f"{rate:,.0f} /s",
        f"{count:,} sequential calls in {seconds:.2f} s; {seconds / count * 1000:.2f} ms each",
        {"tasks": count, "seconds": seconds, "per_second": rate},
    )


def bulk_enqueues(count: int, batch_size: int) -> Row:
    """``taskqueue.enqueue_many`` in batches of ``batch_size``."""
    database.clear_tasks()
    seconds = database.preload("noop", count, batch_size)
    rate = count / seconds
    return Row(
        f"enqueue_many, batches of {batch_size:,}",
        f"{rate:,.0f} /s",
        f"{count:,} tasks in {seconds:.2f} s",
        {"tasks": count, "batch_size": batch_size, "seconds": seconds, "per_second": rate},
    )


def burst_throughput(
    processes: int,
    concurrency: int,
    tasks: int,
    batch_size: int,
    log_dir: Path,
    timeout: float,
    pool: str = "processes",
) -> Row:
    """Preload ``tasks`` no-ops, drain them with ``processes`` burst workers, time it."""
    database.clear_tasks()
    database.preload("noop", tasks, batch_size)
    database.analyze()
    started = time.monotonic()
    workers = [
        start_worker(
            log_dir,
            f"burst-{pool}-{processes}x{concurrency}-{n}",
            "--burst",
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
        )
        for n in range(processes)
    ]
    exits = [wait_for_exit(worker, timeout) for worker in workers]
    wall = time.monotonic() - started
    for worker, result in zip(workers, exits, strict=True):
        require_clean_exit(worker, result)
    done, first, last = database.completed_span("noop")
    if done != tasks or first is None or last is None:
        raise BenchError(f"{done:,} of {tasks:,} no-op tasks completed after the burst workers")
    span = (last - first).total_seconds()
    rate = done / span
    cpu = sum(r.cpu_user + r.cpu_system for r in exits)
    peak = max(r.peak_rss_mib for r in exits)
    plural = "s" if processes > 1 else ""
    return Row(
        f"no-op tasks, {pool} pool, {processes} worker{plural} x concurrency {concurrency}",
        f"{rate:,.0f} /s",
        f"{rate / processes:,.0f} /s per process; wall {wall:.1f} s incl. start-up "
        f"= {done / wall:,.0f} /s; worker CPU {cpu / done * 1e6:,.0f} us/task; "
        f"peak RSS {peak:.0f} MiB",
        {
            "processes": processes,
            "pool": pool,
            "concurrency": concurrency,
            "tasks": done,
            "span_seconds": span,
            "per_second": rate,
            "per_second_per_process": rate / processes,
            "wall_seconds": wall,
            "wall_per_second": done / wall,
            "worker_cpu_seconds": cpu,
            "peak_rss_mib": peak,
        },
    )


def median_of(rows: list[Row]) -> Row:
    """The run with the median rate, its notes saying what every run measured."""
    ordered = sorted(rows, key=lambda row: row.figures["per_second"])
    middle = ordered[(len(ordered) - 1) // 2]
    if len(rows) == 1:
        return middle
    rates = [row.figures["per_second"] for row in rows]
    return Row(
        middle.measure,
        middle.value,
        f"median of {len(rows)} runs ({' / '.join(f'{r:,.0f}' for r in rates)}); {middle.notes}",
        {**middle.figures, "runs_per_second": rates},
    )


def _worker_is_idle(worker_pid: int, listens: bool) -> bool:
    from taskqueue.models import Worker

    registered = Worker.objects.filter(pid=worker_pid, status="running").exists()
    return registered and (not listens or database.listening_sessions() > 0)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    # Nearest rank: the smallest value with at least ``fraction`` of the samples at or below.
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_and_memory(
    samples: int, gap: float, tasks: int, batch_size: int, log_dir: Path, timeout: float
) -> list[Row]:
    """Pickup latency of an idle long-running worker, then its memory after ``tasks`` no-ops."""
    import taskqueue
    from taskqueue.models import Task

    database.clear_tasks()
    listens = database.vendor() == "postgresql"
    worker = start_worker(log_dir, "long-running")
    try:
        wait_until(
            lambda: _worker_is_idle(worker.pid, listens),
            timeout=60,
            message="the worker to register" + (" and LISTEN" if listens else ""),
            worker=worker,
        )
        start_hwm = memory_mib(worker.pid)
        called_at: dict[Any, float] = {}
        returned_at: dict[Any, float] = {}
        for n in range(LATENCY_WARMUP + samples):
            called = time.time()
            task = taskqueue.enqueue("stamp")
            # enqueue commits before it returns (autocommit): the task is visible from now.
            if n >= LATENCY_WARMUP:
                returned_at[task.id] = time.time()
                called_at[task.id] = called
            time.sleep(gap)  # pacing: one task at a time into an idle worker
        wait_until(
            lambda: database.count_tasks("stamp", "completed") == LATENCY_WARMUP + samples,
            timeout=timeout,
            message=f"{samples:,} stamp tasks to complete",
            worker=worker,
        )
        results = dict(Task.objects.filter(id__in=list(returned_at)).values_list("id", "result"))
        latencies = [(results[i] - returned_at[i]) * 1000 for i in returned_at]
        # An upper bound: from the moment enqueue was called, its own work included.
        from_call = [(results[i] - called_at[i]) * 1000 for i in called_at]

        database.preload("noop", tasks, batch_size)
        wait_until(
            lambda: database.count_tasks("noop", "completed") == tasks,
            timeout=timeout,
            message=f"{tasks:,} no-op tasks to complete",
            worker=worker,
        )
        peak = memory_mib(worker.pid)
        resident = memory_mib(worker.pid, "VmRSS")
        worker.process.send_signal(signal.SIGTERM)
        stopped = wait_for_exit(worker, timeout=60)
        require_clean_exit(worker, stopped)
    finally:
        if worker.process.returncode is None:
            worker.process.kill()
            worker.process.wait()
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    path = "LISTEN/NOTIFY" if listens else "polling"
    return [
        Row(
            f"pickup latency p50 / p99, idle worker ({path})",
            f"{p50:.1f} / {p99:.1f} ms",
            f"{samples:,} tasks {gap * 1000:.0f} ms apart; mean {statistics.fmean(latencies):.1f}"
            f" ms, min {min(latencies):.1f} ms, max {max(latencies):.1f} ms; from the enqueue "
            f"call instead of its return: p50 {_percentile(from_call, 0.5):.1f}, "
            f"p99 {_percentile(from_call, 0.99):.1f} ms",
            {
                "samples": samples,
                "gap_seconds": gap,
                "p50_ms": p50,
                "p90_ms": _percentile(latencies, 0.90),
                "p99_ms": p99,
                "mean_ms": statistics.fmean(latencies),
                "min_ms": min(latencies),
                "max_ms": max(latencies),
                "from_call_p50_ms": _percentile(from_call, 0.5),
                "from_call_p99_ms": _percentile(from_call, 0.99),
            },
        ),
        Row(
            f"worker peak RSS after {tasks:,} no-op tasks",
            f"{peak:.1f} MiB",
            f"VmHWM of the long-running worker above; {start_hwm:.1f} MiB when idle at start, "
            f"VmRSS {resident:.1f} MiB at end; exit code after SIGTERM {stopped.returncode}",
            {
                "tasks": tasks,
                "peak_rss_mib": peak,
                "start_peak_rss_mib": start_hwm,
                "end_rss_mib": resident,
                "sigterm_exit_code": stopped.returncode,
            },
        ),
    ]
