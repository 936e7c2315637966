"""Snapshot queries about the queue's current state, for the stats, health and Prometheus views.

Everything here reads; nothing writes. Times come from the database clock.

At scale (PostgreSQL, millions of rows) a naive ``COUNT(*)`` is too slow, so:

- a status whose planner estimate (``pg_class`` row count scaled to the table's current
  size, times ``pg_stats``' frequency of the status) is over ``STATUS_EXACT_LIMIT`` is
  reported as that estimate; its split by task type, queue and due comes from a
  ``TABLESAMPLE SYSTEM`` block sample sized for about ``SAMPLE_ROWS`` of its rows. Both are
  named in the stats' ``approximate`` list;
- every other status is counted exactly per (task type, status) through that index, the
  types listed by a loose index scan; a group reaching ``GROUP_EXACT_LIMIT`` (a stale
  estimate) turns its status into an estimated one, never below what was counted;
- the oldest due task is found by walking the partial ``due`` index once per priority
  (a loose index scan): exact however many tasks wait.

On SQLite (development) every count is exact.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count

from taskqueue import store
from taskqueue.models import (
    READY_STATES,
    UNFINISHED_STATES,
    CircuitState,
    DeadLetter,
    Task,
    TaskStatus,
    TaskType,
)
from taskqueue.store import task_counts, worker_rows
from taskqueue.store.task_counts import oldest_due_at

# Over this planner estimate a status is estimated, not counted (PostgreSQL).
STATUS_EXACT_LIMIT = 10_000
# A (task type, status) group is counted up to this many rows; at it, the estimate wins.
GROUP_EXACT_LIMIT = 5_000
# Rows of the rarest estimated status a block sample aims for, to split estimates by type,
# queue and due.
SAMPLE_ROWS = 1_000
# At most this many rows (of every status) read by that sample: the block sample is most of
# the stats view's time at 10 M rows (10,000 rows: 39 ms; 4,000: 21 ms on 2 cores).
SAMPLE_LIMIT = 4_000

ALL_STATUSES: tuple[str, ...] = tuple(TaskStatus.values)
_READY = tuple(str(status) for status in READY_STATES)
_UNFINISHED = tuple(str(status) for status in UNFINISHED_STATES)


@dataclass
class Group:
    """Tasks of one task type, queue and status."""

    task_type: str
    queue: str
    status: str
    count: int
    # Ready tasks whose run_at has passed (0 for other states).
    due: int = 0
    oldest_due_at: datetime | None = None
    approximate: bool = False


@dataclass
class QueueSnapshot:
    """Counts of every (type, queue, status) group, as of ``now`` (database clock).

    ``groups`` cover the unfinished states in full (with queue); finished states appear in
    ``by_type_status`` only (their queue would need a scan of the finished history).
    """

    now: datetime
    by_status: dict[str, int]
    by_type_status: dict[tuple[str, str], int]
    groups: list[Group]
    oldest_due_at: datetime | None
    # Human-readable notes naming each approximate figure and how it was obtained.
    approximations: list[str] = field(default_factory=list)
    approximate_statuses: set[str] = field(default_factory=set)
    approximate_types: set[str] = field(default_factory=set)
    # Oldest due run_at per queue where groups were estimated (found by an index walk).
    queue_oldest_due_at: dict[str, datetime | None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def oldest_due_age(self) -> float | None:
        """Seconds the oldest due task has waited past its run_at (None: nothing due)."""
        if self.oldest_due_at is None:
            return None
        return max(0.0, (self.now - self.oldest_due_at).total_seconds())

    def by_queue(self) -> dict[str, dict[str, Any]]:
        """Per queue: unfinished counts by status, ``due`` and the oldest due task's age."""
        queues: dict[str, dict[str, Any]] = {}
        for group in self.groups:
            entry = queues.setdefault(group.queue, empty_breakdown())
            _add(entry, group, self.now)
        for queue, oldest in self.queue_oldest_due_at.items():
            entry = queues.setdefault(queue, empty_breakdown())
            _merge_oldest(entry, Group("", queue, "", 0, oldest_due_at=oldest), self.now)
        return dict(sorted(queues.items()))

    def by_type(self) -> dict[str, dict[str, Any]]:
        """Per task type: counts by every status, ``due`` and the oldest due task's age."""
        types: dict[str, dict[str, Any]] = {}
        for (task_type, status), count in self.by_type_status.items():
            entry = types.setdefault(task_type, empty_breakdown())
            entry[status] = count
            entry["total"] += count
        for group in self.groups:
            entry = types.setdefault(group.task_type, empty_breakdown())
            entry["due"] += group.due
            _merge_oldest(entry, group, self.now)
        for task_type, entry in types.items():
            entry["approximate"] = task_type in self.approximate_types
        return dict(sorted(types.items()))

    def due_groups(self) -> dict[tuple[str, str], int]:
        """Due tasks per (task type, queue)."""
        due: dict[tuple[str, str], int] = defaultdict(int)
        for group in self.groups:
            if group.due:
                due[(group.task_type, group.queue)] += group.due
        return dict(due)


def empty_breakdown() -> dict[str, Any]:
    entry: dict[str, Any] = {"total": 0}
    entry.update(dict.fromkeys(ALL_STATUSES, 0))
    entry.update({"due": 0, "oldest_pending_age": None, "approximate": False})
    return entry


def _add(entry: dict[str, Any], group: Group, now: datetime) -> None:
    entry[group.status] += group.count
    entry["total"] += group.count
    entry["due"] += group.due
    entry["approximate"] = entry["approximate"] or group.approximate
    _merge_oldest(entry, group, now)


def _merge_oldest(entry: dict[str, Any], group: Group, now: datetime) -> None:
    if group.oldest_due_at is None:
        return
    age = max(0.0, (now - group.oldest_due_at).total_seconds())
    if entry["oldest_pending_age"] is None or age > entry["oldest_pending_age"]:
        entry["oldest_pending_age"] = round(age, 3)


def queue_snapshot(using: str | None = None) -> QueueSnapshot:
    """Counts by status, by task type and by queue, the due work and its oldest task."""
    using = using or store.database_alias()
    if store.vendor(using) == "postgresql":
        return _postgresql_snapshot(using)
    return _exact_snapshot(using)


def _exact_snapshot(using: str) -> QueueSnapshot:
    now = store.db_now(using)
    rows = task_counts.grouped_counts(using, now)
    by_status = dict.fromkeys(ALL_STATUSES, 0)
    by_type_status: dict[tuple[str, str], int] = defaultdict(int)
    groups: list[Group] = []
    for task_type, queue, status, count, due, oldest in rows:
        by_status[status] = by_status.get(status, 0) + count
        by_type_status[(task_type, status)] += count
        if status in _UNFINISHED:
            groups.append(
                Group(
                    task_type, queue, status, count, int(due or 0), task_counts.as_datetime(oldest)
                )
            )
    oldest_values = [g.oldest_due_at for g in groups if g.oldest_due_at is not None]
    return QueueSnapshot(
        now=now,
        by_status=by_status,
        by_type_status=dict(by_type_status),
        groups=groups,
        oldest_due_at=min(oldest_values) if oldest_values else None,
    )


def status_estimates(using: str | None = None) -> dict[str, int] | None:
    """PostgreSQL planner estimates of rows per status (None until the table is analyzed).

    The row count of the last ANALYZE is scaled to the table's current size, as the
    planner does, then split by the status column's most-common-value frequencies.
    """
    row = task_counts.status_statistics(using or store.database_alias())
    if row is None:
        return None
    reltuples, relpages, pages, values, freqs = row
    if reltuples is None or reltuples < 0 or not values:
        return None
    rows = reltuples / relpages * pages if relpages else reltuples
    estimates = dict.fromkeys(ALL_STATUSES, 0)
    for value, freq in zip(values, freqs, strict=False):
        estimates[value] = round(rows * freq)
    return estimates


def _postgresql_snapshot(using: str) -> QueueSnapshot:
    estimates = status_estimates(using) or {}
    big = {status for status, count in estimates.items() if count > STATUS_EXACT_LIMIT}
    counts, now = _capped_counts(using, [s for s in ALL_STATUSES if s not in big])
    # A stale estimate can hide a backlog: a group reaching the limit makes its status big,
    # estimated at no less than what was counted.
    for status in {status for (_, status), count in counts.items() if count >= GROUP_EXACT_LIMIT}:
        counted = sum(count for (_, st), count in counts.items() if st == status)
        estimates[status] = max(estimates.get(status, 0), counted)
        big.add(status)
    counts = {key: count for key, count in counts.items() if key[1] not in big}
    by_status = dict.fromkeys(ALL_STATUSES, 0)
    for (_, status), count in counts.items():
        by_status[status] += count
    snapshot = QueueSnapshot(
        now=now, by_status=by_status, by_type_status=counts, groups=[], oldest_due_at=None
    )
    snapshot.groups = _small_groups(using, [k for k in counts if k[1] in _UNFINISHED], now)
    if big:
        for status in sorted(big):
            by_status[status] = estimates[status]
        snapshot.groups += _sampled_groups(using, snapshot, big, estimates, now)
    snapshot.oldest_due_at = oldest_due_at(using)
    return snapshot


def _capped_counts(using: str, statuses: list[str]) -> tuple[dict[tuple[str, str], int], datetime]:
    """Rows per (task type, status), each counted through the (task_type, status) index up to
    GROUP_EXACT_LIMIT; the task types come from a loose index scan of that index."""
    rows = task_counts.capped_type_status_counts(using, statuses, GROUP_EXACT_LIMIT)
    now = rows[0][3] if rows else store.db_now(using)
    return {(name, status): count for name, status, count, _ in rows if count}, now


def _small_groups(using: str, keys: list[tuple[str, str]], now: datetime) -> list[Group]:
    """Exact (type, queue, status) counts of the groups under the limit."""
    if not keys:
        return []
    return [
        Group(task_type, queue, status, count, due, oldest)
        for task_type, queue, status, count, due, oldest in task_counts.group_counts(
            using, keys, now
        )
    ]


def _sampled_groups(
    using: str,
    snapshot: QueueSnapshot,
    big: set[str],
    estimates: dict[str, int],
    now: datetime,
) -> list[Group]:
    """Split each big status's estimate by type, queue and due from a block sample."""
    total = max(1, sum(estimates.values()))
    # Unfinished states matter most (depth, due): aim for about SAMPLE_ROWS rows of the
    # rarest of them, but never read more than SAMPLE_LIMIT rows of the whole table.
    unfinished = [estimates[status] for status in big if status in _UNFINISHED]
    smallest = max(1, min(unfinished or [estimates[status] for status in big]))
    ceiling = min(100.0, 100.0 * SAMPLE_LIMIT / total)
    percent = min(ceiling, max(0.01, 100.0 * SAMPLE_ROWS / smallest))
    sample: list[tuple[Any, ...]] = []
    for _ in range(3):
        sample = task_counts.sample_groups(using, now, percent, sorted(big))
        if {row[2] for row in sample} >= big or percent >= ceiling:
            break
        percent = min(ceiling, percent * 10)  # an unlucky draw on a small table: read more
    sampled: dict[str, int] = defaultdict(int)
    for _, _, status, count, _ in sample:
        sampled[status] += count
    groups: list[Group] = []
    queues: set[str] = set()
    by_type_status = snapshot.by_type_status
    for task_type, queue, status, count, due in sample:
        share = estimates[status] / sampled[status]
        by_type_status[(task_type, status)] = by_type_status.get((task_type, status), 0) + round(
            count * share
        )
        snapshot.approximate_types.add(task_type)
        if status in _UNFINISHED:
            group = Group(task_type, queue, status, round(count * share), approximate=True)
            if status in _READY:
                group.due = round(due * share)
                queues.add(queue)
            groups.append(group)
    for queue in sorted(queues):
        snapshot.queue_oldest_due_at[queue] = oldest_due_at(using, queue=queue)
    snapshot.approximate_statuses.update(big)
    for status in sorted(big):
        snapshot.approximations.append(
            f"counts.{status}: planner estimate (pg_class row count scaled to the table's "
            f"size, times pg_stats' frequency of the status), over {STATUS_EXACT_LIMIT:,}"
        )
    missed = sorted(status for status in big if not sampled.get(status))
    snapshot.approximations.append(
        f"by_type/by_queue for {', '.join(sorted(big))}: the estimate split by a "
        f"{percent:.3g}% block sample ({sum(sampled.values()):,} of its rows); "
        "oldest_pending_age by queue exact, by type omitted for these"
        + (f"; too rare to sample, so in counts only: {', '.join(missed)}" if missed else "")
    )
    return groups


def unreviewed_dead_letters(using: str | None = None) -> int:
    """Dead letters nobody has reviewed and that were not retried since."""
    using = using or store.database_alias()
    return DeadLetter.objects.using(using).filter(reviewed=False, resolved_at__isnull=True).count()


def live_workers(using: str | None = None) -> list[dict[str, Any]]:
    """The live workers (``taskqueue.store.worker_rows.is_live``), each with the number of tasks
    it holds (running tasks it claimed)."""
    using = using or store.database_alias()
    now = store.db_now(using)
    workers = list(worker_rows.live_workers(using).order_by("id"))
    in_hand = dict(
        Task.objects.using(using)
        .filter(status=TaskStatus.RUNNING, claimed_by__in=[w.id for w in workers])
        .values_list("claimed_by")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("claimed_by", "n")
    )
    return [
        {
            "id": worker.id,
            "host": worker.hostname,
            "pid": worker.pid,
            "queues": list(worker.queues or []),
            "task_types": list(worker.task_types or []),
            "concurrency": worker.concurrency,
            "started_at": worker.started_at.isoformat(),
            "last_heartbeat": worker.last_heartbeat.isoformat(),
            "heartbeat_age": round(max(0.0, (now - worker.last_heartbeat).total_seconds()), 3),
            "tasks_processed": worker.tasks_processed,
            "tasks_in_hand": in_hand.get(worker.id, 0),
        }
        for worker in workers
    ]


def open_circuits(using: str | None = None) -> list[dict[str, Any]]:
    """Task types whose circuit breaker is open or probing (half open)."""
    using = using or store.database_alias()
    types = TaskType.objects.using(using).exclude(circuit_state=CircuitState.CLOSED)
    return [
        {
            "task_type": task_type.name,
            "state": task_type.circuit_state,
            "opened_at": task_type.circuit_opened_at.isoformat()
            if task_type.circuit_opened_at
            else None,
            "consecutive_failures": task_type.consecutive_failures,
            "cooldown": task_type.circuit_cooldown,
        }
        for task_type in types.order_by("name")
    ]
