"""Every write of a ``TaskType`` row: the columns a handler declares, whether a live worker
serves it, pause and resume, and its circuit breaker's state.

Workers copy their handlers' declarations here at start (``sync_from_specs``), the admin and
the commands pause, resume and reset circuits, and ``taskqueue.store.flow`` decides when a
circuit opens or closes and calls the circuit verbs below to write it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from taskqueue import signals
from taskqueue.core.registry import HandlerSpec, registry
from taskqueue.core.retry import DEFAULT_STRATEGY
from taskqueue.events import Severity, emit
from taskqueue.models import READY_STATES, CircuitState, Task, TaskType
from taskqueue.store import sql
from taskqueue.store.common import database_alias

logger = logging.getLogger("taskqueue.flow")

# The circuit columns of a breaker that is closed and has counted nothing.
CLOSED_CIRCUIT: dict[str, Any] = {
    "circuit_state": CircuitState.CLOSED,
    "circuit_opened_at": None,
    "consecutive_failures": 0,
}


def declared_fields(spec: HandlerSpec) -> dict[str, Any]:
    """The ``TaskType`` columns a handler's registration declares (the one mapping)."""
    breaker = spec.circuit_breaker
    return {
        "description": spec.description,
        "critical": spec.critical,
        "default_queue": spec.queue,
        "default_priority": spec.priority,
        "default_max_attempts": spec.max_attempts,
        "default_retry": (spec.retry or DEFAULT_STRATEGY).to_dict(),
        "default_timeout": spec.timeout,
        # Flow control as the handler declares it, so every worker enforces the same limits
        # (the last one to start wins) and the admin shows them.
        "rate_limit": spec.rate_limit or "",
        "concurrency_limit": spec.concurrency_limit,
        "circuit_threshold": breaker.failures if breaker else None,
        "circuit_cooldown": breaker.cooldown if breaker else None,
    }


# --- which types live workers serve (taskqueue.worker.presence) ---------------------------------


def sync_from_specs(using: str, specs: list[HandlerSpec]) -> None:
    """Create or refresh the rows of the types a starting worker serves, marked active."""
    names = [spec.name for spec in specs]
    existing = set(
        TaskType.objects.using(using).filter(name__in=names).values_list("name", flat=True)
    )
    TaskType.objects.using(using).bulk_create(
        [
            TaskType(name=spec.name, **declared_fields(spec))
            for spec in specs
            if spec.name not in existing
        ],
        ignore_conflicts=True,
    )
    for spec in specs:
        refreshed = declared_fields(spec)
        # A row's retry strategy stays the one it was created with, as it always has.
        del refreshed["default_retry"]
        TaskType.objects.using(using).filter(name=spec.name).update(
            **refreshed, is_active=True, last_seen_at=Now(), updated_at=Now()
        )
    # A handler that no longer has a breaker: nothing would ever close a circuit left open.
    TaskType.objects.using(using).filter(
        name__in=[spec.name for spec in specs if spec.circuit_breaker is None]
    ).exclude(circuit_state=CircuitState.CLOSED, consecutive_failures=0).update(**CLOSED_CIRCUIT)


def mark_served(using: str, names: list[str]) -> None:
    """A live worker serves ``names``: keep them active and note when they were last seen."""
    TaskType.objects.using(using).filter(name__in=names).update(is_active=True, last_seen_at=Now())


def mark_unserved(using: str, names: list[str], still_served: set[str]) -> None:
    """A worker that served ``names`` stopped: those no live worker serves become inactive."""
    TaskType.objects.using(using).filter(name__in=names).exclude(name__in=still_served).update(
        is_active=False, updated_at=Now()
    )


# --- circuit state (decided by taskqueue.store.flow) -------------------------------------------


def save_claim_controls(using: str, task_type: str, changes: dict[str, Any]) -> None:
    """Write what a gated claim changed on its locked row (rate tokens, half-open circuit)."""
    if changes:
        TaskType.objects.using(using).filter(name=task_type).update(**changes)


def forget_failures(using: str, task_type: str) -> None:
    """A success on a closed circuit: its count of failures in a row starts again."""
    TaskType.objects.using(using).filter(name=task_type, circuit_state=CircuitState.CLOSED).update(
        consecutive_failures=0
    )


def close_circuit(using: str, task_type: str) -> bool:
    """Close an open or half-open circuit; False when it was closed already.

    Guarded: when two workers' successes race, one closes it (and announces it).
    """
    return bool(
        TaskType.objects.using(using)
        .filter(name=task_type)
        .exclude(circuit_state=CircuitState.CLOSED)
        .update(**CLOSED_CIRCUIT, updated_at=Now())
    )


def count_failure(using: str, task_type: str) -> tuple[int, str, int | None] | None:
    """Add one failure in a row; return (failures, circuit state, threshold), None if no row.

    The increment locks the row, so what is read back is this failure's to decide on.
    """
    types = TaskType.objects.using(using).filter(name=task_type)
    if not types.update(consecutive_failures=F("consecutive_failures") + 1):
        return None
    return types.values_list("consecutive_failures", "circuit_state", "circuit_threshold").get()


def open_circuit(using: str, task_type: str) -> None:
    TaskType.objects.using(using).filter(name=task_type).update(
        circuit_state=CircuitState.OPEN, circuit_opened_at=Now(), updated_at=Now()
    )


def announce_circuit(using: str, task_type: str, *, opened: bool, message: str) -> None:
    """Send ``circuit_opened`` or ``circuit_closed`` once the transaction commits."""
    signal = signals.circuit_opened if opened else signals.circuit_closed
    transaction.on_commit(partial(_announce, signal, task_type, message), using=using)


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
        # Workers overwrite these at start-up; a row made here is one no worker has served.
        TaskType.objects.using(using).get_or_create(
            name=name, defaults=declared_fields(registry.get(name))
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
            **CLOSED_CIRCUIT, updated_at=Now()
        )
        for name in reopened:
            announce_circuit(
                using, name, opened=False, message=f"circuit of {name} closed: reset by hand"
            )
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
