"""Per task type flow control kept in the database: pause, rate limit, concurrency limit,
circuit breaker.

Every control lives on the type's ``TaskType`` row, so it holds across all workers on all
machines. The main claim skips every type under control; ``claim_gated`` claims such a type
under its row lock, at most as many tasks as its limits allow at that moment.

This module decides (how many to claim, when a circuit opens or closes); the rows are
written by ``taskqueue.store.task_type_rows``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q

from taskqueue.core.registry import RATE_PATTERN, CircuitBreaker, registry
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import CircuitState, Task, TaskStatus, TaskType
from taskqueue.store import sql, task_type_rows
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
            task_type_rows.save_claim_controls(using, task_type, changes)
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
    task_type_rows.save_claim_controls(using, task_type, changes)
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


# --- the circuit breaker: when it opens and closes ---------------------------------------------


def record_successes(using: str, task_types_done: list[str]) -> None:
    """Close or reset the circuit breakers of ``task_types_done`` after successes.

    Called after each completion (in the handler's transaction for atomic handlers). Types
    without a breaker cost nothing.
    """
    watched = [name for name in task_types_done if breaker_of(name) is not None]
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
            task_type_rows.forget_failures(using, name)
        elif task_type_rows.close_circuit(using, name):
            task_type_rows.announce_circuit(
                using, name, opened=False, message=f"circuit of {name} closed: a task succeeded"
            )


def record_failure(using: str, task_type: str) -> None:
    """Count a failed attempt towards ``task_type``'s circuit breaker.

    Called in the failure's transaction, for attempts that failed or timed out.
    """
    breaker = breaker_of(task_type)
    if breaker is None:
        return
    counted = task_type_rows.count_failure(using, task_type)
    if counted is None:
        return
    failures, state, threshold = counted
    threshold = threshold or breaker.failures
    if state == CircuitState.HALF_OPEN:
        reason = f"circuit of {task_type} opened again: its probe failed"
    elif state == CircuitState.CLOSED and failures >= threshold:
        reason = f"circuit of {task_type} opened after {failures} failures in a row"
    else:
        return  # still under the threshold, or already open
    task_type_rows.open_circuit(using, task_type)
    task_type_rows.announce_circuit(using, task_type, opened=True, message=reason)
