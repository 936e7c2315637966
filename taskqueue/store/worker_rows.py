"""Every write of a ``Worker`` row, and the one definition of a live worker.

A worker registers at start, heartbeats, says it is stopping when it starts to drain and
that it stopped at the end; rescue marks the silent ones lost (``taskqueue.store.rescue``).
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from taskqueue.conf import settings as tq_settings
from taskqueue.models import Worker, WorkerStatus
from taskqueue.store.common import database_alias

# A draining worker still holds its tasks and still serves its types.
LIVE_STATES = (WorkerStatus.RUNNING, WorkerStatus.STOPPING)


def is_live() -> Q:
    """Live: running or draining, and heartbeated within ``STALE_AFTER`` seconds of the
    database's clock. A condition, so the admin can annotate its list with it."""
    fresh_since = Now() - timedelta(seconds=float(tq_settings.STALE_AFTER))
    return Q(status__in=LIVE_STATES, last_heartbeat__gte=fresh_since)


def live_workers(using: str | None = None) -> QuerySet[Worker]:
    """The live workers (see ``is_live``)."""
    return Worker.objects.using(using or database_alias()).filter(is_live())


def register(
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    queues: list[str],
    task_types: list[str],
    concurrency: int,
) -> None:
    """Create or refresh a starting worker's row: running, heartbeating now."""
    Worker.objects.using(database_alias()).update_or_create(
        id=worker_id,
        defaults={
            "hostname": hostname,
            "pid": pid,
            "queues": list(queues),
            "task_types": task_types,
            "concurrency": concurrency,
            "status": WorkerStatus.RUNNING,
            "started_at": Now(),
            "last_heartbeat": Now(),
            "stopped_at": None,
        },
    )


def beat(worker_id: str, tasks_processed: int) -> bool:
    """Record a heartbeat; True when the worker had been marked lost (it is running again).

    Frozen past STALE_AFTER and taken for dead, then resumed: live again. Its tasks were
    rescued meanwhile, and its late writes about them are fenced off by their leases.
    """
    workers = Worker.objects.using(database_alias())
    workers.filter(id=worker_id).update(last_heartbeat=Now(), tasks_processed=tasks_processed)
    return bool(
        workers.filter(id=worker_id, status=WorkerStatus.LOST).update(status=WorkerStatus.RUNNING)
    )


def mark_stopping(worker_id: str) -> None:
    """The worker has begun to drain: it claims nothing more but still finishes its tasks."""
    Worker.objects.using(database_alias()).filter(id=worker_id, status=WorkerStatus.RUNNING).update(
        status=WorkerStatus.STOPPING
    )


def mark_stopped(worker_id: str, tasks_processed: int) -> None:
    """The worker's goodbye: stopped now, with its final count."""
    Worker.objects.using(database_alias()).filter(id=worker_id).update(
        status=WorkerStatus.STOPPED,
        stopped_at=Now(),
        last_heartbeat=Now(),
        tasks_processed=tasks_processed,
    )
