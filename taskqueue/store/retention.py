"""Retention: delete finished history in bounded batches, each its own short transaction.

Which rows may go is decided here, once, for both the deletion and the dry run: completed and
cancelled tasks past their age, failed tasks whose dead letter was reviewed long enough ago,
dead letters resolved (their task retried) long ago, workflows left without tasks, and rows
of workers that stopped or were lost long ago. A finished task that an unfinished task still
depends on is kept: the dependent will read its upstream's result when it runs. Per-minute
outcome metrics go after ``METRICS["MINUTES_KEPT"]`` minutes; their totals never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q

from taskqueue.conf import settings as tq_settings
from taskqueue.models import (
    UNFINISHED_STATES,
    DeadLetter,
    EventRecord,
    MetricsMinute,
    Task,
    TaskDependency,
    TaskStatus,
    Worker,
    WorkerStatus,
    Workflow,
)
from taskqueue.store import sql

# The kinds of rows pruned, in the order a run prunes them: the small, cheap kinds first so a
# large backlog of completed tasks cannot starve them of the time budget; workflows last,
# once the run has deleted the tasks that kept them.
PRUNE_KINDS = (
    "workers",
    "metrics",
    "events",
    "resolved_dead_letters",
    "reviewed_dead",
    "cancelled",
    "completed",
    "workflows",
)

# The RETENTION sub-key giving each kind's age.
AGE_SETTING = {
    "workers": "workers",
    "resolved_dead_letters": "reviewed_dead",
    "reviewed_dead": "reviewed_dead",
    "cancelled": "cancelled",
    "completed": "completed",
}

# A workflow is created just before its tasks; one younger than this with no tasks may be
# one whose tasks are still being enqueued outside a transaction, so it is left alone.
WORKFLOW_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class Cutoffs:
    """For each kind, the database time before which its rows may go (None: keep forever)."""

    now: datetime
    before: dict[str, datetime | None]

    @classmethod
    def from_retention(cls, using: str, retention: dict[str, Any]) -> Cutoffs:
        """Turn RETENTION ages into cutoffs on the database clock."""
        now = sql.db_now(using)
        before: dict[str, datetime | None] = {}
        for kind, key in AGE_SETTING.items():
            age = retention.get(key)
            before[kind] = None if age is None else now - timedelta(seconds=age)
        before["workflows"] = now - WORKFLOW_GRACE
        # Per-minute outcome rows; the totals (MetricsTotal) are never pruned.
        before["metrics"] = now - timedelta(minutes=tq_settings.METRICS["MINUTES_KEPT"])
        # Events kept for the live stream (EVENTS["KEEP"] seconds).
        before["events"] = now - timedelta(seconds=tq_settings.EVENTS["KEEP"])
        return cls(now=now, before=before)


def _unfinished_dependents() -> Exists:
    return Exists(
        TaskDependency.objects.filter(depends_on=OuterRef("pk"), task__status__in=UNFINISHED_STATES)
    )


def prunable(kind: str, using: str, cutoffs: Cutoffs) -> models.QuerySet[Any] | None:
    """Return the rows of ``kind`` that may be deleted now (None when kept forever)."""
    if kind not in PRUNE_KINDS:
        raise ValueError(f"unknown retention kind {kind!r}; known: {', '.join(PRUNE_KINDS)}")
    before = cutoffs.before[kind]
    if before is None:
        return None
    if kind in ("completed", "cancelled"):
        # status + completed_at: served by the partial index taskqueue_task_finished_idx.
        return (
            Task.objects.using(using)
            .filter(status=TaskStatus(kind), completed_at__lt=before)
            .filter(~_unfinished_dependents())
        )
    if kind == "reviewed_dead":
        current = DeadLetter.objects.filter(task=OuterRef("pk"), resolved_at__isnull=True)
        return (
            Task.objects.using(using)
            .filter(status=TaskStatus.FAILED)
            .filter(Exists(current.filter(reviewed=True, reviewed_at__lt=before)))
            # Every current dead letter of the task must be reviewed, and long enough ago.
            .filter(
                ~Exists(
                    current.filter(
                        Q(reviewed=False) | Q(reviewed_at__isnull=True) | Q(reviewed_at__gte=before)
                    )
                )
            )
            .filter(~_unfinished_dependents())
        )
    if kind == "resolved_dead_letters":
        return DeadLetter.objects.using(using).filter(resolved_at__lt=before)
    if kind == "metrics":
        return MetricsMinute.objects.using(using).filter(minute__lt=before)
    if kind == "events":
        return EventRecord.objects.using(using).filter(time__lt=before)
    if kind == "workers":
        # Stopping sets last_heartbeat too, so it is the age of both stopped and lost rows.
        return Worker.objects.using(using).filter(
            status__in=(WorkerStatus.STOPPED, WorkerStatus.LOST), last_heartbeat__lt=before
        )
    return (
        Workflow.objects.using(using)
        .filter(created_at__lt=before)
        .filter(~Exists(Task.objects.filter(workflow=OuterRef("pk"))))
    )


# Oldest first, so a run cut short by its time budget has removed the oldest history.
_ORDER = {
    "completed": ("completed_at",),
    "cancelled": ("completed_at",),
    "reviewed_dead": ("completed_at",),
    "resolved_dead_letters": ("resolved_at",),
    "workers": ("last_heartbeat",),
    "metrics": ("minute",),
    "events": ("time",),
    "workflows": ("created_at",),
}


def count_prunable(kind: str, using: str, cutoffs: Cutoffs) -> int:
    """Count the rows of ``kind`` a prune would delete now (the dry run)."""
    rows = prunable(kind, using, cutoffs)
    return 0 if rows is None else rows.count()


def delete_prunable_batch(kind: str, using: str, cutoffs: Cutoffs, batch_size: int) -> int:
    """Delete up to ``batch_size`` rows of ``kind`` in one short transaction; return how many."""
    rows = prunable(kind, using, cutoffs)
    if rows is None:
        return 0
    with transaction.atomic(using=using):
        # On PostgreSQL the chosen rows are locked and rows another transaction holds (a
        # dead task being retried right now) are skipped, not waited for. SQLite, which has
        # no row locks, ignores select_for_update; its write lock covers the transaction.
        ids = list(
            rows.order_by(*_ORDER[kind], "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return 0
        # The rule is applied again to the chosen ids, so a row that changed since it was
        # selected cannot go. Only the key is loaded; Django's collector deletes the
        # attempts, dependencies and dead letters that cascade from a task.
        _, deleted = rows.filter(pk__in=ids).only("pk").delete()
    return deleted.get(rows.model._meta.label, 0)
