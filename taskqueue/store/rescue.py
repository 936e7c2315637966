"""Rescue: take back tasks held by workers that stopped heartbeating.

Any live worker runs this every ``RESCUE_INTERVAL`` seconds; running it on every worker at
once is safe. A task held by a worker silent for ``STALE_AFTER`` seconds goes back to the
queue, or is dead-lettered when its attempts are spent (the attempt was counted at claim,
so a task that kills its worker every time still ends). The state change goes through the
lease-fenced verbs, so a frozen worker that wakes up cannot overwrite its successor.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.events import Severity
from taskqueue.models import AttemptOutcome, Task, TaskStatus, Worker, WorkerStatus
from taskqueue.retry import next_delay, strategy_from_dict
from taskqueue.sql import CLAIMED_COLUMNS, ClaimedTask
from taskqueue.store.common import database_alias
from taskqueue.store.running import emit_for, fail_attempt

logger = logging.getLogger("taskqueue.store.rescue")

LIVE_STATES = (WorkerStatus.RUNNING, WorkerStatus.STOPPING)
RESCUE_BATCH = 500
WORKER_LOST = "WorkerLost"


@dataclass
class RescueResult:
    retried: list[UUID] = field(default_factory=list)
    dead_lettered: list[UUID] = field(default_factory=list)
    cancelled: list[UUID] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)
    # Each rescued task and the status it was left in, for the rescuer's outcome metrics.
    outcomes: list[tuple[ClaimedTask, str]] = field(default_factory=list)


def rescue_stale_tasks(stale_after: float, rescuer: str, rng: random.Random) -> RescueResult:
    """Put back or dead-letter the running tasks of workers silent for ``stale_after`` s."""
    using = database_alias()
    fresh_since = Now() - timedelta(seconds=stale_after)
    result = RescueResult()
    result.lost_workers = _mark_lost_workers(using, fresh_since)
    live = Worker.objects.using(using).filter(
        status__in=LIVE_STATES, last_heartbeat__gte=fresh_since
    )
    orphaned = (
        Task.objects.using(using)
        .filter(status=TaskStatus.RUNNING)
        .exclude(Q(claimed_by__in=live.values("id")))
    )
    _rescue(orphaned, using, rescuer, rng, result)
    return result


def rescue_own_tasks(worker_id: str, rng: random.Random) -> RescueResult:
    """At start-up: take back what an earlier process with this worker id left running.

    A worker restarted under the same ``--id`` looks live at once, so the stale-worker rule
    would never see the tasks its previous incarnation died holding.
    """
    using = database_alias()
    result = RescueResult()
    held = Task.objects.using(using).filter(status=TaskStatus.RUNNING, claimed_by=worker_id)
    _rescue(held, using, worker_id, rng, result)
    return result


def _rescue(
    tasks: QuerySet[Task], using: str, rescuer: str, rng: random.Random, result: RescueResult
) -> None:
    skip_locked = connections[using].features.has_select_for_update_skip_locked
    with transaction.atomic(using=using):
        # Several rescuers at once: each takes rows no other is handling right now.
        rows = list(
            tasks.order_by("started_at")
            .select_for_update(skip_locked=skip_locked)[:RESCUE_BATCH]
            .values(*CLAIMED_COLUMNS, "lease_id", "claimed_by")
        )
        for row in rows:
            _rescue_one(row, rescuer, rng, result)


def _mark_lost_workers(using: str, fresh_since: Now) -> list[str]:
    stale = Worker.objects.using(using).filter(
        status__in=LIVE_STATES, last_heartbeat__lt=fresh_since
    )
    lost = list(stale.values_list("id", flat=True))
    if lost:
        stale.filter(id__in=lost).update(status=WorkerStatus.LOST)
        logger.warning("workers stopped heartbeating and are presumed dead: %s", ", ".join(lost))
    return lost


def _rescue_one(row: dict, rescuer: str, rng: random.Random, result: RescueResult) -> None:
    holder = row.pop("claimed_by") or "an unknown worker"
    if row["lease_id"] is None:
        return  # not claimed through the claim statement; nothing to fence on
    task = ClaimedTask(**row)
    error = (
        f"worker {holder} stopped heartbeating while running attempt {task.attempts} of "
        f"{task.max_attempts}; rescued by {rescuer}"
    )
    failure = {
        "worker_id": holder,
        "error_type": WORKER_LOST,
        "error": error,
        "outcome": AttemptOutcome.WORKER_LOST,
    }
    announced = {"worker_id": holder, "error_type": WORKER_LOST, "message": error}
    dead = task.attempts >= task.max_attempts
    delay = 0.0 if dead else next_delay(task.attempts, strategy_from_dict(task.retry), rng)
    # Through fail_attempt: a task someone asked to cancel ends cancelled, not run again.
    status = fail_attempt(
        task, dead=dead, delay=delay, cancel_reason=f"cancelled; {error}", **failure
    )
    if status is not None:
        result.outcomes.append((task, status))
    # Announced once the rescue commits (the taskqueue.lifecycle log record included): a
    # rolled-back rescue changed nothing.
    if status == TaskStatus.CANCELLED:
        result.cancelled.append(task.id)
        _on_commit(emit_for, task, signals.task_cancelled, "cancelled", **announced)
        return
    if status is None:
        return
    failed = {"severity": Severity.WARNING, **announced}
    _on_commit(emit_for, task, signals.task_failed, "failed", **failed)
    if status == TaskStatus.FAILED:
        result.dead_lettered.append(task.id)
        _on_commit(
            emit_for,
            task,
            signals.task_dead_lettered,
            "dead_lettered",
            severity=Severity.ERROR,
            **announced,
        )
        return
    result.retried.append(task.id)
    _on_commit(
        emit_for,
        task,
        signals.task_retry_scheduled,
        "retry_scheduled",
        severity=Severity.WARNING,
        **announced,
    )


def _on_commit(func: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    transaction.on_commit(partial(func, *args, **kwargs), using=database_alias())
