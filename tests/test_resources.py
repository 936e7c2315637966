"""Resource hygiene: memory ceilings recycle without losing work; memory stays flat."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import taskqueue
from taskqueue.models import Task, TaskStatus
from tests.conftest import finish_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Task.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_a_handler_process_over_the_ceiling_is_replaced_between_tasks(run_worker) -> None:
    taskqueue.enqueue_many([("hoard_memory", {"mib": 80})] * 3, queue="memory")
    taskqueue.enqueue_many([("add", {"a": n, "b": 1}) for n in range(10)], queue="memory")
    result = run_worker(
        "--burst", "--queues", "memory", "--concurrency", "1", "--max-memory", "100"
    )
    assert _statuses() == {TaskStatus.COMPLETED: 13}
    # Each hoarding task pushes its process over 100 MiB: it is replaced after that task.
    assert result.stderr.count("recycles: holds") == 3, result.stderr


def test_the_worker_over_its_ceiling_finishes_what_it_holds_and_exits(run_worker) -> None:
    taskqueue.enqueue_many([("add", {"a": n, "b": 1}) for n in range(200)])
    # Any worker holds more than 1 MiB: it recycles after its first batch.
    run_worker("--pool", "threads", "--max-memory", "1", "--concurrency", "1")
    statuses = _statuses()
    assert TaskStatus.RUNNING not in statuses
    assert 0 < statuses.get(TaskStatus.COMPLETED, 0) < 200
    assert statuses[TaskStatus.COMPLETED] + statuses[TaskStatus.PENDING] == 200


@pytest.mark.slow
def test_memory_stays_flat_with_debug_on(start_worker) -> None:
    total, warm_up = 20_000, 4_000
    taskqueue.enqueue_many([("noop", {})] * total)
    worker = start_worker("--burst", extra_env={"TASKQUEUE_TEST_DEBUG": "1"})
    try:
        done = lambda: Task.objects.filter(status=TaskStatus.COMPLETED).count()  # noqa: E731
        wait_for(lambda: done() >= warm_up, timeout=120, message="the warm-up")
        before = {pid: _rss_mib(pid) for pid in [worker.pid, *_children(worker.pid)]}
        wait_for(lambda: done() >= total - 1_000, timeout=240, message="most tasks")
        after = {pid: _rss_mib(pid) for pid in before if os.path.exists(f"/proc/{pid}")}
    finally:
        code, _, stderr = finish_worker(worker, timeout=120)
    assert code == 0, stderr
    growth = {pid: round(after[pid] - before[pid], 1) for pid in after}
    print(f"\nRSS growth over {total - 1_000 - warm_up} tasks with DEBUG=True (MiB): {growth}")
    # Logged queries alone would add tens of MiB over these tasks; allow allocator noise.
    assert all(delta < 8 for delta in growth.values()), growth
    assert worker.pid in after


@pytest.mark.postgres_only
def test_database_connections_per_worker_are_bounded(start_worker) -> None:
    from django.db import connection

    concurrency = 3
    taskqueue.enqueue_many([("ledger", {"n": n}) for n in range(3_000)])

    def backends() -> set[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return {row[0] for row in cursor.fetchall()}

    # Sessions already open are not the worker's: threads of earlier tests in this process
    # can leave theirs behind until garbage collection closes them.
    before = backends()
    worker = start_worker("--concurrency", str(concurrency))

    at_peak: list[tuple] = []
    peak_count = [0]

    def sessions() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, application_name, backend_start, state, left(query, 80) "
                "FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            rows = [row for row in cursor.fetchall() if row[0] not in before]
        # A handler slot's connection is closed after each task, as Django does after a
        # request, and opened again for the next: the old backend can still be listed for a
        # moment beside the new one (longer on a busy machine). A slot's sessions share its
        # application_name, so each name counts once.
        count = len({row[1] for row in rows if row[1]}) + sum(1 for row in rows if not row[1])
        if count > peak_count[0]:
            peak_count[0] = count
            at_peak[:] = rows  # kept to say which sessions they were if the bound fails
        return count

    peak = 0

    def finished() -> bool:
        nonlocal peak
        peak = max(peak, sessions())
        return not Task.objects.exclude(status=TaskStatus.COMPLETED).exists()

    wait_for(finished, timeout=120, interval=0.05, message="all tasks to complete")
    worker.send_signal(signal.SIGTERM)
    assert finish_worker(worker)[0] == 0
    # One per handler process, plus the claim loop, the LISTEN thread and the side duties.
    print(f"\npeak sessions of one worker with concurrency {concurrency}: {peak}")
    assert concurrency <= peak <= concurrency + 3, "\n".join(map(str, at_peak))
