"""Schedule bookkeeping: firing due slots, run-now, recording successes (dead-man's switch).

Each slot fires exactly once however many workers race for it: a worker advances the
schedule's ``next_run_at`` with a compare-and-set on the value it read, and enqueues the
slot's task in the same transaction only when its update matched. A loser's update matches
no row (it waited on the winner's row lock, then saw the new value), so it inserts nothing:
no IntegrityError, nothing in the logs. The unique constraint on (schedule, slot) stays as
the backstop.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice, takewhile

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from taskqueue.core.registry import registry
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import CatchUp, Schedule, Task
from taskqueue.schedules import heartbeats
from taskqueue.schedules.cron import CronError, CronSlots
from taskqueue.store import sql
from taskqueue.store.bulk_enqueue import emit_enqueued
from taskqueue.store.common import database_alias
from taskqueue.store.enqueueing import build_task

logger = logging.getLogger("taskqueue.schedules")

# Slots that became due this recently are ordinary lateness (a busy worker, a slow query):
# each fires. Older ones were missed while no worker ran, and follow the schedule's catch_up.
CATCH_UP_TOLERANCE = timedelta(seconds=10)
# catch_up="all" fires at most this many missed slots (the latest ones).
MAX_CATCH_UP = 1000
# Due schedules handled per turn; the rest wait for the next turn (a fraction of a second).
MAX_SCHEDULES_PER_TURN = 100

_reported: set[Hashable] = set()


@dataclass(frozen=True)
class FiringPlan:
    """What one turn does for one due schedule: the slots to fire and the next run."""

    slots: list[datetime]
    next_run_at: datetime
    missed: bool = False  # slots older than the tolerance were due
    capped: bool = False  # catch_up="all" left out missed slots beyond MAX_CATCH_UP


def plan_firing(
    slots: CronSlots, next_run_at: datetime, now: datetime, catch_up: str
) -> FiringPlan:
    """Decide which slots to fire at ``now`` for a schedule due since ``next_run_at``."""
    following = slots.next_after(now)
    boundary = now - CATCH_UP_TOLERANCE
    if next_run_at > boundary:
        recent = [next_run_at, *takewhile(lambda slot: slot <= now, slots.after(next_run_at))]
        return FiringPlan(recent, following)
    recent = list(takewhile(lambda slot: slot <= now, slots.after(boundary)))
    missed: list[datetime] = []
    capped = False
    if catch_up == CatchUp.ALL:
        missed = list(
            islice(
                takewhile(lambda slot: slot >= next_run_at, slots.at_or_before(boundary)),
                MAX_CATCH_UP + 1,
            )
        )
        capped = len(missed) > MAX_CATCH_UP
        missed = missed[:MAX_CATCH_UP][::-1]
    elif catch_up == CatchUp.ONCE and not recent:
        # One run makes up for everything missed; a recent slot firing anyway is that run.
        latest = slots.latest_at_or_before(boundary)
        missed = [max(latest, next_run_at)]
    return FiringPlan([*missed, *recent], following, missed=True, capped=capped)


def fire_due_schedules(now: datetime | None = None) -> int:
    """Fire every due slot of the enabled schedules this process can enqueue; return tasks made.

    ``now`` defaults to the database clock.
    """
    using = database_alias()
    due_by = Now() if now is None else now
    due = list(
        Schedule.objects.using(using)
        .filter(enabled=True)
        .filter(Q(next_run_at__lte=due_by) | Q(next_run_at__isnull=True))
        .order_by("next_run_at")[:MAX_SCHEDULES_PER_TURN]
    )
    if not due:
        return 0
    if now is None:
        now = sql.db_now(using)
    return sum(_fire(schedule, now, using) for schedule in due)


def _fire(schedule: Schedule, now: datetime, using: str) -> int:
    if schedule.task_type not in registry:
        # Another worker may serve it: leave the slot to that one.
        _log_once(
            ("unregistered", schedule.pk, schedule.task_type),
            logging.INFO,
            "schedule %r: task type %r is not registered in this worker; a worker that has "
            "it fires the schedule",
            schedule.name,
            schedule.task_type,
        )
        return 0
    try:
        slots = CronSlots(schedule.cron, schedule.timezone)
    except CronError as exc:
        _log_once(
            ("invalid", schedule.pk, schedule.cron, schedule.timezone),
            logging.ERROR,
            "schedule %r cannot fire: %s",
            schedule.name,
            exc,
        )
        return 0
    if schedule.next_run_at is None:
        # A row made without a next run (by hand, a fixture): its first slot is after now.
        Schedule.objects.using(using).filter(
            pk=schedule.pk, next_run_at__isnull=True, enabled=True
        ).update(next_run_at=slots.next_after(now))
        return 0
    plan = plan_firing(slots, schedule.next_run_at, now, schedule.catch_up)
    try:
        tasks = [_slot_task(schedule, slot, now, offset) for offset, slot in enumerate(plan.slots)]
    except (InvalidPayload, InvalidTaskOption, UnknownTaskType) as exc:
        # Left due, so the dead-man's switch reports it late until someone fixes it.
        _log_once(
            ("unbuildable", schedule.pk, str(exc)),
            logging.ERROR,
            "schedule %r cannot fire: %s",
            schedule.name,
            exc,
        )
        return 0
    fields: dict[str, object] = {"next_run_at": plan.next_run_at}
    if tasks:
        fields.update(last_slot=plan.slots[-1], last_fired_at=now)
    with transaction.atomic(using=using):
        won = (
            Schedule.objects.using(using)
            .filter(pk=schedule.pk, enabled=True, next_run_at=schedule.next_run_at)
            .update(**fields)
        )
        if not won:
            return 0  # another worker fired these slots (or the schedule changed)
        if tasks:
            tasks = _insert(schedule, tasks, using)
    if plan.capped:
        logger.warning(
            "schedule %r missed more than %d slots since %s; fired the latest %d (catch_up='all')",
            schedule.name,
            MAX_CATCH_UP,
            schedule.next_run_at.isoformat(),
            MAX_CATCH_UP,
        )
    elif plan.missed and schedule.catch_up != CatchUp.ALL:
        logger.info(
            "schedule %r missed slots since %s; catch_up=%r fired %d task(s)",
            schedule.name,
            schedule.next_run_at.isoformat(),
            schedule.catch_up,
            len(tasks),
        )
    return len(tasks)


def _build(schedule: Schedule, **options: object) -> Task:
    """A task of ``schedule``: its payload, queue and priority (the handler's when unset)."""
    if schedule.queue:
        options["queue"] = schedule.queue
    if schedule.priority is not None:
        options["priority"] = schedule.priority
    task = build_task(schedule.task_type, schedule.payload, **options)
    task.schedule_id = schedule.pk
    return task


def _slot_task(schedule: Schedule, slot: datetime | None, now: datetime, offset: int) -> Task:
    task = _build(schedule)
    task.schedule_slot = slot
    # Due at its slot, so missed slots run oldest first; a microsecond apart keeps arrival
    # order within the batch.
    task.created_at = task.updated_at = now + timedelta(microseconds=offset)
    task.run_at = slot if slot is not None else task.created_at
    return task


def _insert(schedule: Schedule, tasks: list[Task], using: str) -> list[Task]:
    try:
        with transaction.atomic(using=using):
            Task.objects.using(using).bulk_create(tasks, batch_size=500)
    except IntegrityError:
        # Only reachable if next_run_at was moved back by hand onto fired slots.
        logger.warning(
            "schedule %r: slot(s) %s already fired; not firing them again",
            schedule.name,
            ", ".join(t.schedule_slot.isoformat() for t in tasks if t.schedule_slot),
        )
        return []
    Schedule.objects.using(using).filter(pk=schedule.pk).update(last_task_id=tasks[-1].pk)
    transaction.on_commit(lambda: emit_enqueued(*tasks), using=using)
    return tasks


def run_now(schedule: Schedule, created_by: object = None) -> Task:
    """Enqueue one task of ``schedule`` now, outside its slots (the admin's "run now")."""
    using = database_alias()
    task = _build(schedule, created_by=created_by)
    with transaction.atomic(using=using):
        task.save(force_insert=True, using=using)
        Schedule.objects.using(using).filter(pk=schedule.pk).update(
            last_task_id=task.pk, last_fired_at=Now()
        )
    transaction.on_commit(lambda: emit_enqueued(task), using=using)
    return task


def pause_schedules(schedule_ids: list[int]) -> int:
    """Disable these schedules (they fire nothing, and are never late); return how many changed."""
    return (
        Schedule.objects.using(database_alias())
        .filter(pk__in=schedule_ids, enabled=True)
        .update(enabled=False, late_since=None, updated_at=Now())
    )


def resume_schedules(schedule_ids: list[int]) -> int:
    """Enable these schedules from their next slot on; return how many changed.

    Slots that passed while a schedule was paused were not missed, so they are not caught
    up: the next run is the first slot after now.
    """
    using = database_alias()
    now = sql.db_now(using)
    resumed = 0
    for schedule in Schedule.objects.using(using).filter(pk__in=schedule_ids, enabled=False):
        try:
            next_run_at: datetime | None = CronSlots(schedule.cron, schedule.timezone).next_after(
                now
            )
        except CronError:
            next_run_at = None  # reported by the firing duty
        resumed += (
            Schedule.objects.using(using)
            .filter(pk=schedule.pk, enabled=False)
            .update(enabled=True, next_run_at=next_run_at, late_since=None, updated_at=now)
        )
    return resumed


def record_successes(using: str, schedule_ids: list[int]) -> None:
    """Note that a run of each schedule succeeded now (called right after the completion).

    Ends any late episode, and pings the schedules' heartbeat URLs once the completion has
    committed, from a background thread.
    """
    Schedule.objects.using(using).filter(pk__in=schedule_ids).update(
        last_success_at=Now(), late_since=None
    )
    urls = list(
        Schedule.objects.using(using)
        .filter(pk__in=schedule_ids)
        .exclude(heartbeat_url="")
        .values_list("heartbeat_url", flat=True)
    )
    if urls:
        transaction.on_commit(lambda: heartbeats.ping(urls), using=using)


def _log_once(key: Hashable, level: int, message: str, *args: object) -> None:
    """Log a standing problem once per process, not once per turn."""
    if key in _reported:
        return
    _reported.add(key)
    logger.log(level, message, *args)
