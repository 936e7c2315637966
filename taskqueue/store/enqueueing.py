"""Enqueue: validate a request, then store the task (alone or in bulk).

Every value a task row stores is checked here, before any SQL, so a bad value fails in the
caller with ``InvalidPayload`` or ``InvalidTaskOption`` naming the key path or option and
the problem, never with a database error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from taskqueue.conf import settings as tq_settings
from taskqueue.core.limits import (
    check_delay_seconds,
    check_max_attempts,
    check_run_at,
    check_timeout,
)
from taskqueue.core.payloads import check_payload, short_repr, storable_text
from taskqueue.core.priorities import resolve_priority
from taskqueue.core.registry import HandlerSpec, registry, validate_queue_name
from taskqueue.core.retry import DEFAULT_STRATEGY
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import Task, TaskStatus
from taskqueue.store import dependencies, sql
from taskqueue.store.bulk_enqueue import (
    TaskRequest,
    emit_enqueued,
    save_idempotent,
    store_in_batches,
)
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
# As registry.NAME_PATTERN allows.
MAX_TASK_TYPE_LENGTH = 200


@dataclass(frozen=True)
class _Settings:
    """The settings enqueue applies, read and checked once per call."""

    max_payload_bytes: int
    max_attempts: int
    timeout: float | None

    @classmethod
    def read(cls) -> _Settings:
        timeout = tq_settings.DEFAULT_TIMEOUT
        return cls(
            max_payload_bytes=tq_settings.MAX_PAYLOAD_BYTES,
            max_attempts=check_max_attempts(tq_settings.MAX_ATTEMPTS, "TASKQUEUE['MAX_ATTEMPTS']"),
            timeout=None
            if timeout is None
            else check_timeout(timeout, "TASKQUEUE['DEFAULT_TIMEOUT']"),
        )


def _check_timing(delay: Any, run_at: Any) -> tuple[timedelta | None, datetime | None]:
    """Return ``(delay, run_at)`` checked: a delay over zero, or an aware run_at, or neither."""
    if delay is not None and run_at is not None:
        raise InvalidTaskOption("pass either delay or run_at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, timedelta | int | float):
            raise InvalidTaskOption(
                f"delay must be a timedelta or a number of seconds, got {short_repr(delay)}"
            )
        seconds = check_delay_seconds(delay)
        if not isinstance(delay, timedelta):
            delay = timedelta(seconds=seconds)
        return (delay if seconds > 0 else None), None
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidTaskOption(f"run_at must be a datetime, got {short_repr(run_at)}")
        try:
            naive = run_at.utcoffset() is None
        except Exception:  # a tzinfo of the caller's that cannot answer
            raise InvalidTaskOption(
                f"run_at {short_repr(run_at)} has a time zone that cannot give its UTC offset"
            ) from None
        if naive:
            raise InvalidTaskOption(
                f"run_at {run_at.isoformat()} has no time zone: pass an aware datetime "
                "(for example django.utils.timezone.now() + timedelta(...))"
            )
        return None, check_run_at(run_at, datetime.now(UTC))
    return None, None


def _check_idempotency_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= 255:
        raise InvalidTaskOption(
            f"idempotency_key must be a string of 1 to 255 characters: {short_repr(key)}"
        )
    if storable_text(key) != key:
        raise InvalidTaskOption(
            f"idempotency_key {short_repr(key)} contains a NUL character or a lone surrogate, "
            "which the database cannot store"
        )
    return key


def _check_created_by(user: Any) -> Any:
    user = user_or_none(user)
    if user is None:
        return None
    user_model = Task._meta.get_field("created_by").related_model
    if not isinstance(user, user_model):
        raise InvalidTaskOption(
            f"created_by must be a user ({user_model._meta.label}, such as request.user) or "
            f"None, got {short_repr(user)}"
        )
    if user.pk is None:
        raise InvalidTaskOption(f"created_by {short_repr(user)} is a user not saved yet")
    return user


def _validate(
    task_type: Any,
    payload: Any,
    options: Mapping[str, Any],
    settings: _Settings,
    retry_dicts: dict[str, dict[str, Any]],
) -> TaskRequest:
    """Check one enqueue request; ``retry_dicts`` caches each handler's strategy."""
    unknown = set(options) - ENQUEUE_OPTIONS
    if unknown:
        raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(map(str, unknown)))}")
    if not isinstance(task_type, str):
        raise UnknownTaskType(
            f"a task type is a registered handler's name (a string), got {short_repr(task_type)}"
        )
    if len(task_type) > MAX_TASK_TYPE_LENGTH:  # no handler has such a name: keep the message short
        raise UnknownTaskType(
            f"no handler is registered for task type {short_repr(task_type)} "
            f"(names are at most {MAX_TASK_TYPE_LENGTH} characters)"
        )
    spec = registry.get(task_type)
    data = check_payload(payload, settings.max_payload_bytes)
    try:
        spec.bind_payload(data, context=object())
    except TypeError as exc:
        raise InvalidPayload(
            f"payload does not match handler {task_type!r}{spec.signature}: {exc}"
        ) from None
    metadata = options.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise InvalidTaskOption(f"metadata must be a dict, got {type(metadata).__name__}")
    else:
        metadata = check_payload(metadata, settings.max_payload_bytes, what="metadata")
    priority = options.get("priority")
    queue = options.get("queue")
    max_attempts = options.get("max_attempts")
    delay, run_at = _check_timing(options.get("delay"), options.get("run_at"))
    return TaskRequest(
        task_type=task_type,
        queue=validate_queue_name(queue) if queue is not None else spec.queue,
        payload=data,
        priority=resolve_priority(priority) if priority is not None else spec.priority,
        max_attempts=check_max_attempts(max_attempts)
        if max_attempts is not None
        else (spec.max_attempts or settings.max_attempts),
        retry=_retry_dict(spec, retry_dicts),
        timeout=spec.timeout if spec.timeout is not None else settings.timeout,
        idempotency_key=_check_idempotency_key(options.get("idempotency_key")),
        metadata=metadata,
        created_by=_check_created_by(options.get("created_by")),
        run_at=run_at,
        delay=delay,
    )


def _retry_dict(spec: HandlerSpec, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    retry = cache.get(spec.name)
    if retry is None:
        retry = cache[spec.name] = (spec.retry or DEFAULT_STRATEGY).to_dict()
    return retry


def build_task(task_type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Task:
    """Validate one enqueue request and return the unsaved ``Task``; errors name the problem."""
    request = _validate(task_type, payload, options, _Settings.read(), {})
    task = Task(
        task_type=request.task_type,
        queue=request.queue,
        payload=request.payload,
        priority=request.priority,
        max_attempts=request.max_attempts,
        retry=request.retry,
        timeout=request.timeout,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
        created_by=request.created_by,
    )
    if request.run_at is not None:
        task.run_at = request.run_at
        task.status = TaskStatus.SCHEDULED
    task._taskqueue_delay = request.delay  # type: ignore[attr-defined]
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


def enqueue(task_type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Task:
    """Validate and store one task; inside ``transaction.atomic()`` it exists only on commit.

    On PostgreSQL a trigger sends ``NOTIFY`` in the same transaction, so workers wake on
    commit and never for a rolled-back task. With ``depends_on=[task_or_id, ...]`` the task
    waits until those tasks have completed.
    """
    using = database_alias()
    upstream = dependencies.upstream_ids(options.pop("depends_on", None))
    task = build_task(task_type, payload, **options)
    _apply_delays([task], using)
    with transaction.atomic(using=using) if upstream else nullcontext():
        if upstream:
            dependencies.hold_for_upstreams(using, [task], [upstream])
        if task.idempotency_key is None:
            task.save(force_insert=True, using=using)
        else:
            existing = save_idempotent(task, using)
            if existing is not None:
                return existing
        if upstream:
            dependencies.link_upstreams(using, [(task, upstream)])
    transaction.on_commit(lambda: emit_enqueued(task), using=using)
    return task


def enqueue_many(
    items: Iterable[tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]], **defaults: Any
) -> list[Task]:
    """Validate every item, then store them in batches; return their tasks in item order.

    Each item is ``(task_type, payload)`` or a dict with ``task_type``, ``payload`` and any
    enqueue option (``depends_on`` too); ``defaults`` apply to every item. Every item is
    checked before anything is written: if one is invalid, nothing is stored and the error
    names it (``item 3: ...``).

    Valid items are then inserted in batches of 2,000 (``bulk_enqueue.BATCH_SIZE``).
    Called outside a transaction, each batch commits on its own, so a large input never
    holds the database (on SQLite, its single write lock) for long: other writers get in
    between batches. If a batch then fails (the database went away), the batches before it
    stay stored and the error carries a note saying which items those are; idempotency keys
    make such a call safe to repeat. Called inside ``transaction.atomic()``, everything is
    necessarily one transaction: all items are stored or none, and on SQLite the write lock
    is held from the first batch until that transaction ends.
    """
    using = database_alias()
    settings = _Settings.read()
    retry_dicts: dict[str, dict[str, Any]] = {}
    requests: list[TaskRequest] = []
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
                f"item {index} must be (task_type, payload) or a dict, got {short_repr(item)}"
            )
        try:
            upstream = dependencies.upstream_ids(options.pop("depends_on", None))
            request = _validate(task_type, payload, options, settings, retry_dicts)
        except (InvalidPayload, InvalidTaskOption, UnknownTaskType, TypeError) as exc:
            raise type(exc)(f"item {index}: {exc}") from None
        request.upstream = upstream or None
        requests.append(request)
    if not requests:
        return []
    _check_upstreams_exist(using, requests)
    return store_in_batches(using, requests)


def _check_upstreams_exist(using: str, requests: Sequence[TaskRequest]) -> None:
    """Refuse unknown ``depends_on`` ids before the first batch is stored (a read only)."""
    wanted = {i for r in requests if r.upstream for i in r.upstream}
    if not wanted:
        return
    ordered = sorted(wanted)
    found: set[uuid.UUID] = set()
    for start in range(0, len(ordered), dependencies.CHUNK):
        chunk = ordered[start : start + dependencies.CHUNK]
        found.update(Task.objects.using(using).filter(id__in=chunk).values_list("id", flat=True))
    if found == wanted:
        return
    for index, request in enumerate(requests):
        missing = [str(i) for i in request.upstream or () if i not in found]
        if missing:
            raise InvalidTaskOption(
                f"item {index}: depends_on names unknown task(s): {', '.join(missing)}"
            )
