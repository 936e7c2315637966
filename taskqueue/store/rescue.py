"""Rescue: take back tasks held by workers that stopped heartbeating.

Any live worker runs this every ``RESCUE_INTERVAL`` seconds; running it on every worker at
once is safe. A task held by a worker silent for ``STALE_AFTER`` seconds goes back to the
queue, or is dead-lettered when its attempts are spent (the attempt was counted at claim,
so a task that kills its worker every time still ends). The state change goes through the
lease-fenced verbs, so a frozen worker that wakes up cannot overwrite its successor.

A ``running`` row without a lease (written by hand, by an old version, by a restore) can
never be completed by anyone, so it is rescued whoever holds it: fenced on having no lease
and the holder it had, it gets a lease and then goes the same way.

A pass walks the candidates in id order from a random point, in batches, until none are
left or its time budget is spent: a row skipped for any reason (locked by another rescuer,
changed meanwhile, failing to rescue) never stands in front of the others.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.db import connections, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Greatest, Now
from django.db.utils import InterfaceError, OperationalError

from taskqueue.core.retry import next_delay, strategy_from_dict
from taskqueue.models import AttemptOutcome, Task, TaskStatus, Worker, WorkerStatus
from taskqueue.store.common import database_alias
from taskqueue.store.outcome_writes import fail_attempt
from taskqueue.store.sql import CLAIMED_COLUMNS, ClaimedTask
from taskqueue.store.transitions import Transition, announce
from taskqueue.store.worker_rows import LIVE_STATES

logger = logging.getLogger("taskqueue.store.rescue")

RESCUE_BATCH = 500
WORKER_LOST = "WorkerLost"
# A pass runs on the worker's duty thread, between its heartbeats: it stops after this
# share of STALE_AFTER (at most MAX_PASS_SECONDS) so the rescuer is never taken for dead.
PASS_SHARE_OF_STALE_AFTER = 0.25
MAX_PASS_SECONDS = 10.0


@dataclass
class RescueResult:
    retried: list[UUID] = field(default_factory=list)
    dead_lettered: list[UUID] = field(default_factory=list)
    cancelled: list[UUID] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)
    # What each rescue wrote, for the rescuer's outcome metrics.
    transitions: list[Transition] = field(default_factory=list)
    # Rows whose rescue failed with an error (logged); a later pass tries them again.
    failed: list[UUID] = field(default_factory=list)
    # False when the pass stopped at its time budget with candidates left for the next one.
    finished: bool = True


def rescue_stale_tasks(stale_after: float, rescuer: str, rng: random.Random) -> RescueResult:
    """Put back or dead-letter the running tasks of workers silent for ``stale_after`` s,
    and running tasks that have no lease."""
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
        .filter(Q(lease_id__isnull=True) | ~Q(claimed_by__in=live.values("id")))
    )
    budget = min(MAX_PASS_SECONDS, stale_after * PASS_SHARE_OF_STALE_AFTER)
    _rescue(orphaned, using, rescuer, rng, result, budget)
    return result


def rescue_own_tasks(worker_id: str, rng: random.Random) -> RescueResult:
    """At start-up: take back what an earlier process with this worker id left running.

    A worker restarted under the same ``--id`` looks live at once, so the stale-worker rule
    would never see the tasks its previous incarnation died holding.
    """
    using = database_alias()
    result = RescueResult()
    held = Task.objects.using(using).filter(status=TaskStatus.RUNNING, claimed_by=worker_id)
    # No budget: no later pass would find these (this worker id is live from now on).
    _rescue(held, using, worker_id, rng, result, budget=None)
    return result


def _rescue(
    tasks: QuerySet[Task],
    using: str,
    rescuer: str,
    rng: random.Random,
    result: RescueResult,
    budget: float | None,
) -> None:
    """Rescue ``tasks`` batch by batch, in id order from a random id round to it again."""
    deadline = None if budget is None else time.monotonic() + budget
    # A random start: passes that stop at their budget, and rescuers running at once,
    # spread over all the candidates rather than all beginning with the same rows.
    start = uuid.UUID(int=rng.getrandbits(128))
    for lap in (tasks.filter(id__gte=start), tasks.filter(id__lt=start)):
        after: UUID | None = None
        while True:
            page = lap if after is None else lap.filter(id__gt=after)
            seen = _rescue_batch(page, using, rescuer, rng, result)
            if len(seen) < RESCUE_BATCH:
                break  # this lap is done
            after = seen[-1]
            if deadline is not None and time.monotonic() >= deadline:
                result.finished = False
                logger.info(
                    "rescue pass of %s stopped after its %.1f s budget; the next pass goes on",
                    rescuer,
                    budget,
                )
                return


def _rescue_batch(
    page: QuerySet[Task], using: str, rescuer: str, rng: random.Random, result: RescueResult
) -> list[UUID]:
    """Rescue one batch of ``page`` in one transaction; return the ids it read, in order."""
    skip_locked = connections[using].features.has_select_for_update_skip_locked
    with transaction.atomic(using=using):
        # Several rescuers at once: each takes rows no other is handling right now.
        rows = list(
            page.order_by("id")
            .select_for_update(skip_locked=skip_locked)[:RESCUE_BATCH]
            .values(*CLAIMED_COLUMNS, "lease_id", "claimed_by")
        )
        for row in rows:
            task_id = row["id"]
            try:
                # A savepoint per row: one that cannot be rescued leaves the others alone.
                with transaction.atomic(using=using):
                    _rescue_one(dict(row), using, rescuer, rng, result)
            except (OperationalError, InterfaceError):
                raise  # the database is away: the whole pass waits for the next turn
            except Exception:
                result.failed.append(task_id)
                logger.exception(
                    "could not rescue task %s; it stays running until a later pass",
                    task_id,
                    extra={"task_id": str(task_id), "task_type": row["task_type"]},
                )
    return [row["id"] for row in rows]


def _mark_lost_workers(using: str, fresh_since: Now) -> list[str]:
    stale = Worker.objects.using(using).filter(
        status__in=LIVE_STATES, last_heartbeat__lt=fresh_since
    )
    lost = list(stale.values_list("id", flat=True))
    if lost:
        stale.filter(id__in=lost).update(status=WorkerStatus.LOST)
        logger.warning("workers stopped heartbeating and are presumed dead: %s", ", ".join(lost))
    return lost


def _rescue_one(
    row: dict[str, Any], using: str, rescuer: str, rng: random.Random, result: RescueResult
) -> None:
    holder = row.pop("claimed_by")
    lease = row.pop("lease_id")
    holder_name = holder or "an unknown worker"
    if lease is None:
        lease = lease_unleased(using, row["id"], holder)
        if lease is None:
            return  # changed since it was read: no longer this rescue's business
        row["attempts"] = max(row["attempts"], 1)
        task = ClaimedTask(**row, lease_id=lease)
        error = (
            f"task was running without a lease (held by {holder_name}), so no worker could "
            f"record its outcome; attempt {task.attempts} of {task.max_attempts} rescued by "
            f"{rescuer}"
        )
    else:
        task = ClaimedTask(**row, lease_id=lease)
        error = (
            f"worker {holder_name} stopped heartbeating while running attempt {task.attempts} "
            f"of {task.max_attempts}; rescued by {rescuer}"
        )
    failure = {
        "worker_id": holder_name,
        "error_type": WORKER_LOST,
        "error": error,
        "outcome": AttemptOutcome.WORKER_LOST,
    }
    dead = task.attempts >= task.max_attempts
    delay = 0.0 if dead else next_delay(task.attempts, strategy_from_dict(task.retry), rng)
    # Through fail_attempt: a task someone asked to cancel ends cancelled, not run again.
    status = fail_attempt(
        task, dead=dead, delay=delay, cancel_reason=f"cancelled; {error}", **failure
    )
    if status is None:
        return
    # How long it ran is unknown, and its retry is announced without the delay.
    transition = Transition(
        task, status, worker_id=holder_name, error_type=WORKER_LOST, error=error
    )
    result.transitions.append(transition)
    {
        TaskStatus.CANCELLED: result.cancelled,
        TaskStatus.FAILED: result.dead_lettered,
        TaskStatus.RETRYING: result.retried,
    }[status].append(task.id)
    # Announced once the rescue commits (the taskqueue.lifecycle log record included): a
    # rolled-back rescue changed nothing.
    transaction.on_commit(partial(announce, transition), using=using)


def lease_unleased(using: str, task_id: UUID, holder: str | None) -> UUID | None:
    """Give a running task that has no lease a fresh one, fenced on its still having none and
    still being held by ``holder``; None when it changed meanwhile.

    Its attempt is counted if it never was (attempts 0): the lease-fenced verbs then record
    it like any lost attempt. Call in the rescue's transaction.
    """
    lease = uuid.uuid4()
    held_by = Q(claimed_by__isnull=True) if holder is None else Q(claimed_by=holder)
    fenced = (
        Task.objects.using(using)
        .filter(held_by, id=task_id, status=TaskStatus.RUNNING, lease_id__isnull=True)
        .update(lease_id=lease, attempts=Greatest(F("attempts"), 1), updated_at=Now())
    )
    return lease if fenced else None
