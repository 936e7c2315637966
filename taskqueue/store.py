"""Every change of a task's state, in one place.

Enqueue, claim, complete, retry later, dead-letter, release, cancel, requeue and delete. The
worker, the admin, the API and the commands call these; nothing else writes task state.
Every write about a claimed task is fenced by its lease: when no row matches, someone else
owns the task now, and the write is dropped and logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.db.models.functions import Now
from django.utils import timezone

from taskqueue import signals, sql
from taskqueue.conf import settings as tq_settings
from taskqueue.events import emit
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import (
    READY_STATES,
    UNFINISHED_STATES,
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskStatus,
)
from taskqueue.payloads import check_json, check_payload
from taskqueue.priorities import resolve_priority
from taskqueue.registry import registry, validate_max_attempts, validate_queue_name
from taskqueue.retry import DEFAULT_STRATEGY
from taskqueue.sql import ClaimedTask

logger = logging.getLogger("taskqueue.store")

ENQUEUE_OPTIONS = frozenset(
    {
        "priority",
        "delay",
        "run_at",
        "queue",
        "max_attempts",
        "idempotency_key",
        "metadata",
        "created_by",
    }
)
# How often enqueue re-reads after losing an idempotency race before giving up.
IDEMPOTENCY_ATTEMPTS = 5


def database_alias() -> str:
    return tq_settings.DATABASE


# --- enqueue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timing:
    delay: timedelta | None
    run_at: datetime | None

    @property
    def needs_clock(self) -> bool:
        return self.delay is not None


def _check_timing(delay: Any, run_at: Any) -> _Timing:
    if delay is not None and run_at is not None:
        raise InvalidTaskOption("pass either delay or run_at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, timedelta | int | float):
            raise InvalidTaskOption(
                f"delay must be a timedelta or a number of seconds, got {delay!r}"
            )
        if not isinstance(delay, timedelta):
            delay = timedelta(seconds=delay)
        if delay < timedelta(0):
            raise InvalidTaskOption(f"delay must not be negative, got {delay}")
        return _Timing(delay=delay if delay > timedelta(0) else None, run_at=None)
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidTaskOption(f"run_at must be a datetime, got {run_at!r}")
        if timezone.is_naive(run_at):
            raise InvalidTaskOption(
                f"run_at {run_at.isoformat()} has no time zone: pass an aware datetime "
                "(for example django.utils.timezone.now() + timedelta(...))"
            )
        return _Timing(delay=None, run_at=run_at)
    return _Timing(delay=None, run_at=None)


def _user_or_none(user: Any) -> Any:
    # request.user of an anonymous visitor is not a row: record no creator.
    if user is None or not getattr(user, "is_authenticated", True):
        return None
    return user


def build_task(task_type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Task:
    """Validate one enqueue request and return the unsaved ``Task``; errors name the problem."""
    unknown = set(options) - ENQUEUE_OPTIONS
    if unknown:
        raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
    spec = registry.get(task_type)
    data = check_payload(payload, tq_settings.MAX_PAYLOAD_BYTES)
    try:
        spec.bind_payload(data, context=object())
    except TypeError as exc:
        raise InvalidPayload(
            f"payload does not match handler {task_type!r}{spec.signature}: {exc}"
        ) from None
    priority = options.get("priority")
    queue = options.get("queue")
    max_attempts = options.get("max_attempts")
    key = options.get("idempotency_key")
    metadata = options.get("metadata")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
        raise InvalidTaskOption(f"idempotency_key must be a string of 1 to 255 characters: {key!r}")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise InvalidTaskOption(f"metadata must be a dict, got {type(metadata).__name__}")
    else:
        check_json(metadata, "metadata")
    timing = _check_timing(options.get("delay"), options.get("run_at"))
    task = Task(
        task_type=task_type,
        queue=validate_queue_name(queue) if queue is not None else spec.queue,
        payload=data,
        priority=resolve_priority(priority) if priority is not None else spec.priority,
        max_attempts=validate_max_attempts(max_attempts)
        if max_attempts is not None
        else (spec.max_attempts or tq_settings.MAX_ATTEMPTS),
        retry=(spec.retry or DEFAULT_STRATEGY).to_dict(),
        timeout=spec.timeout if spec.timeout is not None else tq_settings.DEFAULT_TIMEOUT,
        idempotency_key=key,
        metadata=dict(metadata),
        created_by=_user_or_none(options.get("created_by")),
    )
    if timing.run_at is not None:
        task.run_at = timing.run_at
        task.status = TaskStatus.SCHEDULED
    task._taskqueue_delay = timing.delay  # type: ignore[attr-defined]
    return task


def _apply_delays(tasks: Sequence[Task], using: str) -> None:
    """Turn relative delays into run_at on the database clock (one query for the batch)."""
    delayed = [t for t in tasks if getattr(t, "_taskqueue_delay", None) is not None]
    if not delayed:
        return
    now = sql.db_now(using)
    for task in delayed:
        task.run_at = now + task._taskqueue_delay  # type: ignore[attr-defined]
        task.status = TaskStatus.SCHEDULED


def _stamp_batch(tasks: Sequence[Task], using: str) -> None:
    """Give a batch its times from one read of the database clock.

    Literal times let the bulk insert skip per-row DEFAULT expressions (twice as fast), and
    a microsecond apart each keeps the batch's arrival order for the claim's tie-break.
    """
    now = sql.db_now(using)
    for offset, task in enumerate(tasks):
        arrival = now + timedelta(microseconds=offset)
        task.created_at = task.updated_at = arrival
        delay = getattr(task, "_taskqueue_delay", None)
        if delay is not None:
            task.run_at = now + delay
            task.status = TaskStatus.SCHEDULED
        elif task.status != TaskStatus.SCHEDULED:
            task.run_at = arrival


def enqueue(task_type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Task:
    """Validate and store one task; inside ``transaction.atomic()`` it exists only on commit.

    On PostgreSQL a trigger sends ``NOTIFY`` in the same transaction, so workers wake on
    commit and never for a rolled-back task.
    """
    using = database_alias()
    task = build_task(task_type, payload, **options)
    _apply_delays([task], using)
    if task.idempotency_key is None:
        task.save(force_insert=True, using=using)
    else:
        existing = _save_idempotent(task, using)
        if existing is not None:
            return existing
    transaction.on_commit(lambda: _emit_enqueued(task), using=using)
    return task


def _save_idempotent(task: Task, using: str) -> Task | None:
    """Insert ``task`` unless an unfinished task holds its key; return that one if so."""
    last_error: IntegrityError | None = None
    for _ in range(IDEMPOTENCY_ATTEMPTS):
        existing = (
            Task.objects.using(using)
            .filter(idempotency_key=task.idempotency_key, status__in=UNFINISHED_STATES)
            .first()
        )
        if existing is not None:
            return existing
        try:
            # The partial unique index decides concurrent inserts; a loser re-reads the winner.
            with transaction.atomic(using=using):
                task.save(force_insert=True, using=using)
            return None
        except IntegrityError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


def enqueue_many(
    items: Iterable[tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]], **defaults: Any
) -> list[Task]:
    """Validate and store many tasks in one transaction (bulk insert).

    Each item is ``(task_type, payload)`` or a dict with ``task_type``, ``payload`` and any
    enqueue option; ``defaults`` apply to every item. Nothing is stored if any item is invalid.
    """
    using = database_alias()
    tasks: list[Task] = []
    for index, item in enumerate(items):
        if isinstance(item, Mapping):
            fields = dict(item)
            try:
                task_type = fields.pop("task_type")
            except KeyError:
                raise InvalidTaskOption(f"item {index} has no 'task_type'") from None
            payload = fields.pop("payload", None)
            options = {**defaults, **fields}
        elif isinstance(item, tuple | list) and len(item) == 2:
            task_type, payload = item
            options = dict(defaults)
        else:
            raise InvalidTaskOption(
                f"item {index} must be (task_type, payload) or a dict, got {item!r}"
            )
        try:
            tasks.append(build_task(task_type, payload, **options))
        except (InvalidPayload, InvalidTaskOption, UnknownTaskType, TypeError) as exc:
            raise type(exc)(f"item {index}: {exc}") from None
    if not tasks:
        return []
    _stamp_batch(tasks, using)
    with transaction.atomic(using=using):
        created = [t for t in tasks if t.idempotency_key is None]
        Task.objects.using(using).bulk_create(created, batch_size=1000)
        result: list[Task] = []
        for task in tasks:
            if task.idempotency_key is not None:
                existing = _save_idempotent(task, using)
                if existing is None:
                    created.append(task)
                else:
                    task = existing
            result.append(task)
    transaction.on_commit(lambda: _emit_enqueued(*created), using=using)
    return result


def _emit_enqueued(*tasks: Task) -> None:
    """Announce stored tasks; called on commit, so a rolled-back task is never announced."""
    for task in tasks:
        emit(
            signals.task_enqueued,
            name="enqueued",
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            max_attempts=task.max_attempts,
            message=f"enqueued {task.task_type}",
        )


# --- claim and outcomes (the worker) -------------------------------------------------------


def claim_due_tasks(worker_id: str, queues: list[str], limit: int) -> list[ClaimedTask]:
    """Claim up to ``limit`` due tasks of ``queues`` for ``worker_id``."""
    return sql.claim_due(database_alias(), worker_id, queues, limit)


def complete_tasks(completions: list[tuple[ClaimedTask, Any]]) -> set[uuid.UUID]:
    """Record successful results in one statement; return the ids actually completed."""
    done = sql.complete_batch(
        database_alias(), [(task.id, task.lease_id, result) for task, result in completions]
    )
    for task, _ in completions:
        if task.id not in done:
            _log_lost_lease(task, "completion")
    return done


def _log_lost_lease(task: ClaimedTask, what: str) -> None:
    logger.warning(
        "dropped the %s of task %s: its claim was lost (rescued, cancelled or released)",
        what,
        task.id,
        extra={"task_id": str(task.id), "task_type": task.task_type, "attempt": task.attempts},
    )


def _claimed(task: ClaimedTask, using: str):  # type: ignore[no-untyped-def]
    """The task's row, only while this claim still owns it."""
    return Task.objects.using(using).filter(
        id=task.id, lease_id=task.lease_id, status=TaskStatus.RUNNING
    )


def _record_attempt(
    task: ClaimedTask,
    using: str,
    *,
    worker_id: str,
    outcome: str,
    error_type: str,
    error: str,
    traceback: str,
) -> None:
    TaskAttempt.objects.using(using).create(
        task_id=task.id,
        number=task.attempts,
        worker_id=worker_id,
        outcome=outcome,
        started_at=task.started_at,
        error_type=error_type,
        error=error,
        traceback=traceback,
    )


def retry_later(
    task: ClaimedTask,
    *,
    worker_id: str,
    delay: float,
    error_type: str,
    error: str,
    traceback: str = "",
    outcome: str = AttemptOutcome.FAILED,
) -> bool:
    """Put a failed task back to wait ``delay`` seconds; False if the claim was lost."""
    using = database_alias()
    # No arithmetic for "due now": on SQLite, Now() + interval is written with six decimals
    # and the claim compares it as text with a three-decimal clock, which would keep a
    # zero-delay retry from being due until the next millisecond.
    run_at = (
        Now()
        if delay <= 0
        else ExpressionWrapper(Now() + timedelta(seconds=delay), output_field=DateTimeField())
    )
    with transaction.atomic(using=using):
        updated = _claimed(task, using).update(
            status=TaskStatus.RETRYING,
            run_at=run_at,
            last_error=error,
            claimed_by=None,
            updated_at=Now(),
        )
        if not updated:
            _log_lost_lease(task, "retry")
            return False
        _record_attempt(
            task,
            using,
            worker_id=worker_id,
            outcome=outcome,
            error_type=error_type,
            error=error,
            traceback=traceback,
        )
    return True


def dead_letter(
    task: ClaimedTask,
    *,
    worker_id: str,
    error_type: str,
    error: str,
    traceback: str = "",
    outcome: str = AttemptOutcome.FAILED,
) -> DeadLetter | None:
    """Fail a task for good and file its dead letter; None if the claim was lost."""
    using = database_alias()
    with transaction.atomic(using=using):
        updated = _claimed(task, using).update(
            status=TaskStatus.FAILED,
            last_error=error,
            claimed_by=None,
            completed_at=Now(),
            updated_at=Now(),
        )
        if not updated:
            _log_lost_lease(task, "dead letter")
            return None
        _record_attempt(
            task,
            using,
            worker_id=worker_id,
            outcome=outcome,
            error_type=error_type,
            error=error,
            traceback=traceback,
        )
        history = [
            attempt.as_history_entry()
            for attempt in TaskAttempt.objects.using(using).filter(task_id=task.id)
        ]
        return DeadLetter.objects.using(using).create(
            task_id=task.id,
            task_type=task.task_type,
            queue=task.queue,
            error_type=error_type,
            error=error,
            traceback=traceback,
            attempts=task.attempts,
            attempts_history=history,
        )


def release_tasks(tasks: Sequence[ClaimedTask]) -> int:
    """Give claimed tasks back to the queue with their attempt returned (shutdown)."""
    using = database_alias()
    released = 0
    with transaction.atomic(using=using):
        for task in tasks:
            released += _claimed(task, using).update(
                status=TaskStatus.PENDING,
                attempts=F("attempts") - 1,
                claimed_by=None,
                lease_id=None,
                started_at=None,
                updated_at=Now(),
            )
        if released:
            sql.notify(using, {task.queue for task in tasks})
    return released


# --- triage (admin, API, commands) ---------------------------------------------------------


def _task_id(task_or_id: Task | uuid.UUID | str) -> uuid.UUID:
    if isinstance(task_or_id, Task):
        return task_or_id.id
    if isinstance(task_or_id, uuid.UUID):
        return task_or_id
    try:
        return uuid.UUID(str(task_or_id))
    except ValueError:
        raise InvalidTaskOption(f"{task_or_id!r} is not a task id") from None


CANCELLABLE_STATES = (*READY_STATES, TaskStatus.WAITING)


def cancel(task_or_id: Task | uuid.UUID | str, *, reason: str = "cancelled") -> bool:
    """Cancel a task that has not started; ask a running one to stop.

    Returns True when the task is now cancelled, False when it had already finished or is
    running (then ``cancel_requested`` is set and the handler can see it).
    """
    using = database_alias()
    task_id = _task_id(task_or_id)
    cancelled = (
        Task.objects.using(using)
        .filter(id=task_id, status__in=CANCELLABLE_STATES)
        .update(
            status=TaskStatus.CANCELLED,
            last_error=reason,
            completed_at=Now(),
            updated_at=Now(),
        )
    )
    if cancelled:
        emit(signals.task_cancelled, name="cancelled", task_id=task_id, message=reason)
        return True
    Task.objects.using(using).filter(id=task_id, status=TaskStatus.RUNNING).update(
        cancel_requested=True, updated_at=Now()
    )
    return False


def cancel_tasks(task_ids: Iterable[uuid.UUID]) -> int:
    """Cancel every given task that has not started yet; return how many were cancelled."""
    return sum(cancel(task_id) for task_id in task_ids)


@dataclass(frozen=True)
class RequeueResult:
    requeued: int
    skipped: list[uuid.UUID]  # a newer unfinished task holds the same idempotency key


def requeue_dead(task_ids: Iterable[uuid.UUID]) -> RequeueResult:
    """Put failed (dead) tasks back to ``pending`` with a fresh attempt budget."""
    using = database_alias()
    requeued = 0
    skipped: list[uuid.UUID] = []
    queues: set[str] = set()
    with transaction.atomic(using=using):
        for task_id in task_ids:
            try:
                with transaction.atomic(using=using):
                    rows = (
                        Task.objects.using(using)
                        .filter(id=task_id, status=TaskStatus.FAILED)
                        .update(
                            status=TaskStatus.PENDING,
                            attempts=0,
                            run_at=Now(),
                            claimed_by=None,
                            lease_id=None,
                            started_at=None,
                            completed_at=None,
                            cancel_requested=False,
                            updated_at=Now(),
                        )
                    )
            except IntegrityError:
                skipped.append(task_id)
                continue
            if rows:
                requeued += 1
                DeadLetter.objects.using(using).filter(
                    task_id=task_id, resolved_at__isnull=True
                ).update(resolved_at=Now())
                queues.update(
                    Task.objects.using(using).filter(id=task_id).values_list("queue", flat=True)
                )
        sql.notify(using, queues)
    if skipped:
        logger.warning(
            "did not retry %d dead task(s): an unfinished task holds the same idempotency key",
            len(skipped),
            extra={"task_ids": [str(task_id) for task_id in skipped]},
        )
    return RequeueResult(requeued=requeued, skipped=skipped)


def delete_tasks(task_ids: Iterable[uuid.UUID]) -> int:
    """Delete tasks with their attempts and dead letters; running tasks are kept."""
    using = database_alias()
    ids = list(task_ids)
    with transaction.atomic(using=using):
        doomed = Task.objects.using(using).filter(id__in=ids).exclude(status=TaskStatus.RUNNING)
        count = doomed.count()
        doomed.delete()
    return count


def mark_reviewed(dead_letter_ids: Iterable[int], user: Any, note: str = "") -> int:
    """Mark dead letters reviewed by ``user``; return how many changed."""
    fields: dict[str, Any] = {
        "reviewed": True,
        "reviewed_by": _user_or_none(user),
        "reviewed_at": Now(),
    }
    if note:
        fields["note"] = note
    return (
        DeadLetter.objects.using(database_alias())
        .filter(id__in=list(dead_letter_ids), reviewed=False)
        .update(**fields)
    )


def save_progress(task_id: uuid.UUID, lease_id: uuid.UUID, fraction: float, message: str) -> bool:
    """Store a running task's progress, only while ``lease_id`` still holds the claim."""
    return bool(
        Task.objects.using(database_alias())
        .filter(id=task_id, lease_id=lease_id, status=TaskStatus.RUNNING)
        .update(progress=fraction, progress_message=message)
    )


def is_cancel_requested(task_id: uuid.UUID) -> bool:
    """Whether someone asked a running task to stop (or it is no longer running)."""
    status, requested = Task.objects.using(database_alias()).filter(id=task_id).values_list(
        "status", "cancel_requested"
    ).first() or (TaskStatus.CANCELLED, True)
    return bool(requested) or status == TaskStatus.CANCELLED


def emit_for(task: ClaimedTask, signal: Any, name: str, **fields: Any) -> None:
    """Send a lifecycle signal about a claimed task."""
    emit(
        signal,
        name=name,
        task_id=task.id,
        task_type=task.task_type,
        queue=task.queue,
        attempt=task.attempts,
        max_attempts=task.max_attempts,
        **fields,
    )


__all__ = [
    "ClaimedTask",
    "RequeueResult",
    "build_task",
    "cancel",
    "cancel_tasks",
    "claim_due_tasks",
    "complete_tasks",
    "dead_letter",
    "delete_tasks",
    "enqueue",
    "enqueue_many",
    "is_cancel_requested",
    "mark_reviewed",
    "release_tasks",
    "requeue_dead",
    "retry_later",
    "save_progress",
]
