"""A worker's row: registration at start, heartbeats, and the goodbye at stop.

Workers also register the task types they serve, so the admin lists every type that a live
worker can run (``TaskType.is_active``) and when one was last seen.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from django.db.models.functions import Now

from taskqueue.conf import settings as tq_settings
from taskqueue.core.registry import HandlerSpec, registry
from taskqueue.core.retry import DEFAULT_STRATEGY
from taskqueue.models import CircuitState, TaskType, Worker, WorkerStatus

logger = logging.getLogger("taskqueue.worker.presence")


def default_worker_id() -> str:
    """``host:pid:random``: unique, and tells the admin who holds what."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def register_worker(worker_id: str, queues: list[str], concurrency: int) -> None:
    """Create or refresh this worker's row and mark the task types it serves as active."""
    using = tq_settings.DATABASE
    names = registry.names()
    Worker.objects.using(using).update_or_create(
        id=worker_id,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(queues),
            "task_types": names,
            "concurrency": concurrency,
            "status": WorkerStatus.RUNNING,
            "started_at": Now(),
            "last_heartbeat": Now(),
            "stopped_at": None,
        },
    )
    existing = set(
        TaskType.objects.using(using).filter(name__in=names).values_list("name", flat=True)
    )
    TaskType.objects.using(using).bulk_create(
        [
            TaskType(
                name=spec.name,
                description=spec.description,
                critical=spec.critical,
                default_queue=spec.queue,
                default_priority=spec.priority,
                default_max_attempts=spec.max_attempts,
                default_retry=(spec.retry or DEFAULT_STRATEGY).to_dict(),
                default_timeout=spec.timeout,
                rate_limit=spec.rate_limit or "",
                concurrency_limit=spec.concurrency_limit,
                **_breaker_fields(spec),
            )
            for spec in registry.specs()
            if spec.name not in existing
        ],
        ignore_conflicts=True,
    )
    for spec in registry.specs():
        TaskType.objects.using(using).filter(name=spec.name).update(
            description=spec.description,
            critical=spec.critical,
            default_queue=spec.queue,
            default_priority=spec.priority,
            default_max_attempts=spec.max_attempts,
            default_timeout=spec.timeout,
            # Flow control as this worker's handler declares it, so every worker enforces
            # the same limits (the last one to start wins) and the admin shows them.
            rate_limit=spec.rate_limit or "",
            concurrency_limit=spec.concurrency_limit,
            **_breaker_fields(spec),
            is_active=True,
            last_seen_at=Now(),
            updated_at=Now(),
        )
    # A handler that no longer has a breaker: nothing would ever close a circuit left open.
    TaskType.objects.using(using).filter(
        name__in=[spec.name for spec in registry.specs() if spec.circuit_breaker is None]
    ).exclude(circuit_state=CircuitState.CLOSED, consecutive_failures=0).update(
        circuit_state=CircuitState.CLOSED, circuit_opened_at=None, consecutive_failures=0
    )


def _breaker_fields(spec: HandlerSpec) -> dict[str, Any]:
    breaker = spec.circuit_breaker
    return {
        "circuit_threshold": breaker.failures if breaker else None,
        "circuit_cooldown": breaker.cooldown if breaker else None,
    }


def heartbeat(worker_id: str, tasks_processed: int) -> None:
    """Tell the others this worker is alive, and keep its task types marked active."""
    using = tq_settings.DATABASE
    Worker.objects.using(using).filter(id=worker_id).update(
        last_heartbeat=Now(), tasks_processed=tasks_processed
    )
    # Frozen past STALE_AFTER and taken for dead, then resumed: live again. Its tasks were
    # rescued meanwhile, and its late writes about them are fenced off by their leases.
    if (
        Worker.objects.using(using)
        .filter(id=worker_id, status=WorkerStatus.LOST)
        .update(status=WorkerStatus.RUNNING)
    ):
        logger.warning("worker %s was presumed dead and is heartbeating again", worker_id)
    TaskType.objects.using(using).filter(name__in=registry.names()).update(
        is_active=True, last_seen_at=Now()
    )


def unregister_worker(worker_id: str, tasks_processed: int) -> None:
    """Mark this worker stopped; its types stay active while another live worker serves them."""
    using = tq_settings.DATABASE
    Worker.objects.using(using).filter(id=worker_id).update(
        status=WorkerStatus.STOPPED,
        stopped_at=Now(),
        last_heartbeat=Now(),
        tasks_processed=tasks_processed,
    )
    still_served: set[str] = set()
    for types in live_workers(using).values_list("task_types", flat=True):
        still_served.update(types or [])
    TaskType.objects.using(using).filter(name__in=registry.names()).exclude(
        name__in=still_served
    ).update(is_active=False, updated_at=Now())


def live_workers(using: str):  # type: ignore[no-untyped-def]
    """Workers that are running and have heartbeated within ``STALE_AFTER`` seconds."""
    fresh_since = Now() - timedelta(seconds=float(tq_settings.STALE_AFTER))
    return Worker.objects.using(using).filter(
        status=WorkerStatus.RUNNING, last_heartbeat__gte=fresh_since
    )
