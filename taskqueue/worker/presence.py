"""A worker's row: registration at start, heartbeats, and the goodbye at stop.

Workers also register the task types they serve, so the admin lists every type that a live
worker can run (``TaskType.is_active``) and when one was last seen. The rows are written by
``taskqueue.store.worker_rows`` and ``taskqueue.store.task_type_rows``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from taskqueue.core.registry import registry
from taskqueue.store import task_type_rows, worker_rows
from taskqueue.store.common import database_alias

logger = logging.getLogger("taskqueue.worker.presence")


def default_worker_id() -> str:
    """``host:pid:random``: unique, and tells the admin who holds what."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def register_worker(worker_id: str, queues: list[str], concurrency: int) -> None:
    """Create or refresh this worker's row and mark the task types it serves as active."""
    worker_rows.register(
        worker_id,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        queues=queues,
        task_types=registry.names(),
        concurrency=concurrency,
    )
    task_type_rows.sync_from_specs(database_alias(), registry.specs())


def heartbeat(worker_id: str, tasks_processed: int) -> None:
    """Tell the others this worker is alive, and keep its task types marked active."""
    if worker_rows.beat(worker_id, tasks_processed):
        logger.warning("worker %s was presumed dead and is heartbeating again", worker_id)
    task_type_rows.mark_served(database_alias(), registry.names())


def mark_stopping(worker_id: str) -> None:
    """This worker has begun to drain: it claims nothing more and finishes what it holds."""
    worker_rows.mark_stopping(worker_id)


def unregister_worker(worker_id: str, tasks_processed: int) -> None:
    """Mark this worker stopped; its types stay active while another live worker serves them."""
    using = database_alias()
    worker_rows.mark_stopped(worker_id, tasks_processed)
    still_served: set[str] = set()
    for types in worker_rows.live_workers(using).values_list("task_types", flat=True):
        still_served.update(types or [])
    task_type_rows.mark_unserved(using, registry.names(), still_served)
