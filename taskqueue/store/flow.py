"""Per task type flow control kept in the database: pause, rate limit, concurrency limit,
circuit breaker.

Every control lives on the type's ``TaskType`` row, so it holds across all workers on all
machines. The main claim skips every type under control; ``claim_gated`` claims such a type
under its row lock, at most as many tasks as its limits allow at that moment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.core.registry import RATE_PATTERN, CircuitBreaker, registry
from taskqueue.core.retry import DEFAULT_STRATEGY
from taskqueue.events import Severity, emit
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import READY_STATES, CircuitState, Task, TaskStatus, TaskType
from taskqueue.store import sql
from taskqueue.store.common import database_alias
from taskqueue.store.sql import ClaimedTask

logger = logging.getLogger("taskqueue.flow")

RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The rate limit is a token bucket shared through the TaskType row. It holds one token plus
# a tenth of a second's worth: a fast rate ("1000/s") is then claimed in batches rather than
# one task per transaction, and a worker that wakes up to a tenth of a second late for the
# next token loses none of it, so "10/s" stays 10/s on a busy machine. The price is a burst
# after a quiet spell: 2 tasks at once for "10/s", 101 for "1000/s", 1 for "1/m".
BUCKET_SECONDS = 0.1
# Token counts are floats: never lose a whole token to rounding.
TOKEN_EPSILON = 1e-9


def parse_rate(rate: str) -> float:
    """Return a rate limit such as ``"100/m"`` in tasks per second."""
    if not isinstance(rate, str) or not RATE_PATTERN.fullmatch(rate):
        raise InvalidTaskOption(f"rate_limit must look like '100/m' or '5/s', got {rate!r}")
    count, unit = rate.split("/")
    return int(count) / RATE_UNITS[unit]


def bucket_capacity(per_second: float) -> float:
    """How many tokens the rate bucket holds (the largest burst after a quiet spell)."""
    return 1.0 + per_second * BUCKET_SECONDS


def refill(
    tokens: float | None, counted_at: datetime | None, now: datetime, per_second: float
) -> float:
    """Tokens in the bucket at ``now`` (a bucket never counted starts full)."""
    capacity = bucket_capacity(per_second)
    if tokens is None or counted_at is None:
        return capacity
    elapsed = max((now - counted_at).total_seconds(), 0.0)
    return min(capacity, tokens + elapsed * per_second)


def breaker_of(task_type: str) -> CircuitBreaker | None:
    """The circuit breaker this process's handler of ``task_type`` declares, if any."""
    if task_type not in registry:
        return None
    return registry.get(task_type).circuit_breaker


# --- the gated claim ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatedClaim:
    """What one gated claim of a type got, and when the type is worth trying again."""

    tasks: list[ClaimedTask]
    # Seconds until time alone lets the type yield work (next rate token, end of the
    # circuit's cool-down); None when only new work or finished tasks can.
    retry_after: float | None = None
    # True when the type gave fewer tasks than its limits allowed: nothing more is due.
    drained: bool = False


def gated_task_types(using: str, names: Iterable[str]) -> list[str]:
    """The types among ``names`` that are under flow control and not paused."""
    return list(
        TaskType.objects.using(using)
        .filter(name__in=list(names), paused=False)
        .filter(
            ~Q(circuit_state=CircuitState.CLOSED)
            | ~Q(rate_limit="")
            | Q(concurrency_limit__isnull=False)
        )
        .order_by("name")
        .values_list("name", flat=True)
    )


def limited_work_is_due(using: str, names: Iterable[str], queues: list[str]) -> bool:
    """Whether rate- or concurrency-limited types (circuit closed, not paused) among ``names``
    have due tasks in ``queues``: work a ``--burst`` worker waits for instead of exiting."""
    limited = (
        TaskType.objects.using(using)
        .filter(name__in=list(names), paused=False, circuit_state=CircuitState.CLOSED)
        .filter(~Q(rate_limit="") | Q(concurrency_limit__isnull=False))
    )
    return (
        Task.objects.using(using)
        .due()
        .filter(queue__in=queues, task_type__in=limited.values("name"))
        .exists()
    )


def claim_gated(task_type: str, worker_id: str, queues: list[str], limit: int) -> GatedClaim:
    """Claim up to ``limit`` due tasks of ``task_type`` as far as its controls allow now.

    One short transaction whose first statement locks the type's row, so every worker's
    view of the type's running count, tokens and circuit is the same and current.
    """
    using = database_alias()
    if limit <= 0 or not queues:
        return GatedClaim([])
    with transaction.atomic(using=using):
        controls = sql.lock_task_type(using, task_type)
        if controls is None or controls["paused"]:
            return GatedClaim([])
        return _claim_locked(using, task_type, controls, worker_id, queues, limit)


def _claim_locked(
    using: str,
    task_type: str,
    controls: dict[str, Any],
    worker_id: str,
    queues: list[str],
    limit: int,
) -> GatedClaim:
    now: datetime = controls["now"]
    allowed = limit
    changes: dict[str, Any] = {}
    running: int | None = None
    state = controls["circuit_state"]
    if state == CircuitState.OPEN:
        cooldown = controls["circuit_cooldown"]
        if cooldown is None:
            breaker = breaker_of(task_type)
            cooldown = breaker.cooldown if breaker else 0.0
        reopens_at = (controls["circuit_opened_at"] or now) + timedelta(seconds=cooldown)
        if now < reopens_at:
            return GatedClaim([], retry_after=(reopens_at - now).total_seconds())
        state = changes["circuit_state"] = CircuitState.HALF_OPEN
    if state == CircuitState.HALF_OPEN:
        # One probe at a time decides: while it runs, the type waits for its outcome. A probe
        # that was lost or released leaves nothing running, and the next claim probes again.
        running = _running_count(using, task_type)
        if running:
            _save(using, task_type, changes)
            return GatedClaim([])
        allowed = 1
    if controls["concurrency_limit"] is not None:
        if running is None:
            running = _running_count(using, task_type)
        allowed = min(allowed, controls["concurrency_limit"] - running)
    per_second = tokens = None
    if controls["rate_limit"]:
        per_second = parse_rate(controls["rate_limit"])
        tokens = refill(controls["rate_tokens"], controls["rate_updated_at"], now, per_second)
        allowed = min(allowed, math.floor(tokens + TOKEN_EPSILON))
    claimed = sql.claim_due(using, worker_id, queues, allowed, task_type) if allowed > 0 else []
    retry_after = None
    if per_second is not None and tokens is not None:
        tokens -= len(claimed)
        changes.update(rate_tokens=tokens, rate_updated_at=now)
        if tokens + TOKEN_EPSILON < 1:
            retry_after = (1 - tokens) / per_second
    _save(using, task_type, changes)
    if state == CircuitState.HALF_OPEN and claimed:
        logger.info(
            "circuit of %s is half open: task %s probes it",
            task_type,
            claimed[0].id,
            extra={"task_type": task_type, "task_id": str(claimed[0].id)},
        )
    return GatedClaim(
        claimed, retry_after=retry_after, drained=allowed > 0 and len(claimed) < allowed
    )


def _running_count(using: str, task_type: str) -> int:
    return Task.objects.using(using).filter(task_type=task_type, status=TaskStatus.RUNNING).count()


def _save(using: str, task_type: str, changes: dict[str, Any]) -> None:
    if changes:
        TaskType.objects.using(using).filter(name=task_type).update(**changes)


# --- the circuit breaker -----------------------------------------------------------------------


def record_successes(using: str, task_types: list[str]) -> None:
    """Close or reset the circuit breakers of ``task_types`` after successes.

    Called after each completion (in the handler's transaction for atomic handlers). Types
    without a breaker cost nothing.
    """
    watched = [name for name in task_types if breaker_of(name) is not None]
    if not watched:
        return
    # Usually closed with no failures: one indexed read finds nothing to do.
    rows = list(
        TaskType.objects.using(using)
        .filter(name__in=watched)
        .filter(Q(consecutive_failures__gt=0) | ~Q(circuit_state=CircuitState.CLOSED))
        .values_list("name", "circuit_state")
    )
    for name, state in rows:
        if state == CircuitState.CLOSED:
            TaskType.objects.using(using).filter(
                name=name, circuit_state=CircuitState.CLOSED
            ).update(consecutive_failures=0)
            continue
        # Guarded: when two workers' successes race, one closes it and announces it.
        closed = (
            TaskType.objects.using(using)
            .filter(name=name)
            .exclude(circuit_state=CircuitState.CLOSED)
            .update(
                circuit_state=CircuitState.CLOSED,
                circuit_opened_at=None,
                consecutive_failures=0,
                updated_at=Now(),
            )
        )
        if closed:
            _announce_closed(using, name, f"circuit of {name} closed: a task succeeded")


def record_failure(using: str, task_type: str) -> None:
    """Count a failed attempt towards ``task_type``'s circuit breaker.

    Called in the failure's transaction, for attempts that failed or timed out.
    """
    breaker = breaker_of(task_type)
    if breaker is None:
        return
    types = TaskType.objects.using(using).filter(name=task_type)
    # The increment locks the row, so the read below and the decision are this failure's.
    if not types.update(consecutive_failures=F("consecutive_failures") + 1):
        return
    failures, state, threshold = types.values_list(
        "consecutive_failures", "circuit_state", "circuit_threshold"
    ).get()
    threshold = threshold or breaker.failures
    if state == CircuitState.HALF_OPEN:
        reason = f"circuit of {task_type} opened again: its probe failed"
    elif state == CircuitState.CLOSED and failures >= threshold:
        reason = f"circuit of {task_type} opened after {failures} failures in a row"
    else:
        return  # still under the threshold, or already open
    types.update(circuit_state=CircuitState.OPEN, circuit_opened_at=Now(), updated_at=Now())
    transaction.on_commit(
        partial(_announce, signals.circuit_opened, task_type, reason), using=using
    )


def _announce_closed(using: str, task_type: str, message: str) -> None:
    transaction.on_commit(
        partial(_announce, signals.circuit_closed, task_type, message), using=using
    )


def _announce(signal: Any, task_type: str, message: str) -> None:
    # Logged by the taskqueue.lifecycle receiver, like every event.
    opened = signal is signals.circuit_opened
    emit(
        signal,
        name="circuit_opened" if opened else "circuit_closed",
        severity=Severity.WARNING if opened else Severity.INFO,
        task_type=task_type,
        message=message,
    )


# --- pause, resume, reset (admin and commands) -------------------------------------------------


def ensure_task_types(names: Iterable[str]) -> list[str]:
    """Create the missing TaskType rows of registered ``names``.

    Returns the names unknown both to the database and to this process's registry; when
    there are any, nothing is created.
    """
    using = database_alias()
    names = list(dict.fromkeys(names))
    existing = set(
        TaskType.objects.using(using).filter(name__in=names).values_list("name", flat=True)
    )
    unknown = [name for name in names if name not in existing and name not in registry]
    if unknown:
        return unknown
    for name in names:
        if name in existing:
            continue
        spec = registry.get(name)
        breaker = spec.circuit_breaker
        # Workers overwrite these at start-up; a row made here is one no worker has served.
        TaskType.objects.using(using).get_or_create(
            name=name,
            defaults={
                "description": spec.description,
                "critical": spec.critical,
                "default_queue": spec.queue,
                "default_priority": spec.priority,
                "default_max_attempts": spec.max_attempts,
                "default_retry": (spec.retry or DEFAULT_STRATEGY).to_dict(),
                "default_timeout": spec.timeout,
                "rate_limit": spec.rate_limit or "",
                "concurrency_limit": spec.concurrency_limit,
                "circuit_threshold": breaker.failures if breaker else None,
                "circuit_cooldown": breaker.cooldown if breaker else None,
            },
        )
    return []


def pause_task_types(names: Iterable[str]) -> list[str]:
    """Stop claiming tasks of ``names`` (claimed ones finish); return the names paused now."""
    using = database_alias()
    with transaction.atomic(using=using):
        paused = _names_where(using, names, paused=False)
        TaskType.objects.using(using).filter(name__in=paused).update(paused=True, updated_at=Now())
    for name in paused:
        logger.info("task type %s paused", name, extra={"task_type": name})
    return paused


def resume_task_types(names: Iterable[str]) -> list[str]:
    """Let tasks of paused ``names`` be claimed again; return the names resumed now."""
    using = database_alias()
    with transaction.atomic(using=using):
        resumed = _names_where(using, names, paused=True)
        TaskType.objects.using(using).filter(name__in=resumed).update(
            paused=False, updated_at=Now()
        )
        _wake_workers_for(using, resumed)
    for name in resumed:
        logger.info("task type %s resumed", name, extra={"task_type": name})
    return resumed


def reset_circuits(names: Iterable[str]) -> list[str]:
    """Close the circuits of ``names`` and forget their failures; return the names whose
    circuit was not closed before."""
    using = database_alias()
    names = list(names)
    with transaction.atomic(using=using):
        reopened = list(
            TaskType.objects.using(using)
            .filter(name__in=names)
            .exclude(circuit_state=CircuitState.CLOSED)
            .order_by("name")
            .values_list("name", flat=True)
        )
        TaskType.objects.using(using).filter(name__in=names).update(
            circuit_state=CircuitState.CLOSED,
            circuit_opened_at=None,
            consecutive_failures=0,
            updated_at=Now(),
        )
        for name in reopened:
            _announce_closed(using, name, f"circuit of {name} closed: reset by hand")
        _wake_workers_for(using, reopened)
    return reopened


def _names_where(using: str, names: Iterable[str], **conditions: Any) -> list[str]:
    return list(
        TaskType.objects.using(using)
        .filter(name__in=list(names), **conditions)
        .order_by("name")
        .values_list("name", flat=True)
    )


def _wake_workers_for(using: str, names: list[str]) -> None:
    """NOTIFY the queues holding ready tasks of ``names``, so workers claim them at once."""
    if not names or sql.vendor(using) != "postgresql":
        return
    queues = set(
        Task.objects.using(using)
        .filter(task_type__in=names, status__in=READY_STATES)
        .order_by()
        .values_list("queue", flat=True)
        .distinct()
    )
    sql.notify(using, queues)
