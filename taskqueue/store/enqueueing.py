"""Enqueue: validate a request, then store the task (alone or in bulk)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from taskqueue import signals, sql
from taskqueue.conf import settings as tq_settings
from taskqueue.events import emit
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import (
    UNFINISHED_STATES,
    Task,
    TaskStatus,
)
from taskqueue.payloads import check_json, check_payload
from taskqueue.priorities import resolve_priority
from taskqueue.registry import registry, validate_max_attempts, validate_queue_name
from taskqueue.retry import DEFAULT_STRATEGY
from taskqueue.store import workflows
from taskqueue.store.common import database_alias, user_or_none

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
        created_by=user_or_none(options.get("created_by")),
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
    commit and never for a rolled-back task. With ``depends_on=[task_or_id, ...]`` the task
    waits until those tasks have completed.
    """
    using = database_alias()
    upstream = workflows.upstream_ids(options.pop("depends_on", None))
    task = build_task(task_type, payload, **options)
    _apply_delays([task], using)
    with transaction.atomic(using=using) if upstream else nullcontext():
        if upstream:
            workflows.hold_for_upstreams(using, [task], [upstream])
        if task.idempotency_key is None:
            task.save(force_insert=True, using=using)
        else:
            existing = _save_idempotent(task, using)
            if existing is not None:
                return existing
        if upstream:
            workflows.link_upstreams(using, [(task, upstream)])
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
    enqueue option (``depends_on`` too); ``defaults`` apply to every item. Nothing is stored
    if any item is invalid.
    """
    using = database_alias()
    tasks: list[Task] = []
    upstreams: list[list[Any]] = []
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
            upstreams.append(workflows.upstream_ids(options.pop("depends_on", None)))
            tasks.append(build_task(task_type, payload, **options))
        except (InvalidPayload, InvalidTaskOption, UnknownTaskType, TypeError) as exc:
            raise type(exc)(f"item {index}: {exc}") from None
    if not tasks:
        return []
    _stamp_batch(tasks, using)
    with transaction.atomic(using=using):
        if any(upstreams):
            workflows.hold_for_upstreams(using, tasks, upstreams)
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
        if any(upstreams):
            new = {task.id for task in created}
            workflows.link_upstreams(
                using, [(t, ids) for t, ids in zip(tasks, upstreams, strict=True) if t.id in new]
            )
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
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            message=f"enqueued {task.task_type}",
        )
