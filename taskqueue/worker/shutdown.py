"""How a worker stops: drain what it holds, release the rest, close its pool, say goodbye.

The same path after a signal, ``--burst``, ``--max-tasks`` and an unexpected error, and
built so that nothing on it can leave a task ``running`` or the process hanging: each step
runs even when the one before failed, and the pool is closed (its children killed if they
do not stop) on every way out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from taskqueue import signals, store
from taskqueue.events import emit
from taskqueue.monitoring import stream as event_stream
from taskqueue.monitoring.recorder import flush_at_stop
from taskqueue.worker import presence

if TYPE_CHECKING:
    from taskqueue.worker.loop import WorkerLoop

logger = logging.getLogger("taskqueue.worker")

# While draining, outcomes are written at least this often (seconds), as in the claim loop.
DRAIN_TICK = 0.05
MAX_DB_BACKOFF = 5.0  # the claim loop's cap too (taskqueue.worker.loop)


def drain(worker: WorkerLoop) -> bool:
    """Let running tasks finish up to the shutdown timeout, then release what is left.

    Whatever fails on the way, what is still held is released and the pool closed.
    Returns False when something failed.
    """
    drained = True
    try:
        # Seen as "stopping" in the admin while it drains; still live, so nothing it holds
        # is rescued. Failing to say so changes nothing else.
        presence.mark_stopping(worker.config.worker_id)
    except Exception:
        logger.warning("worker %s could not mark itself stopping", worker.config.worker_id)
    try:
        _finish_running(worker)
    except Exception:
        drained = False
        logger.exception("worker %s could not finish its running tasks", worker.config.worker_id)
    try:
        leftover = list(worker.in_hand.values())
        if leftover:
            worker.stranded_handlers = not worker.pool.stop_running()
            released = with_retries(worker.using, store.release_tasks, leftover)
            logger.warning("released %d task(s) still running at shutdown", released)
            worker.in_hand.clear()
    except Exception:
        drained = False
        logger.exception("worker %s could not release its tasks", worker.config.worker_id)
    finally:
        worker.pool.close()
    return drained


def _finish_running(worker: WorkerLoop) -> None:
    not_started = worker.pool.take_not_started()
    if not_started:
        with_retries(worker.using, store.release_tasks, not_started)
        for task in not_started:
            worker.in_hand.pop(task.id, None)
    deadline = time.monotonic() + worker.config.shutdown_timeout
    while worker.in_hand and not worker.force_stop and time.monotonic() < deadline:
        worker.wake_event.wait(min(DRAIN_TICK, max(deadline - time.monotonic(), 0)))
        worker.wake_event.clear()
        with_retries(worker.using, worker.flush_finished)
    with_retries(worker.using, worker.flush_finished)


def with_retries(using: str, func: Callable[..., Any], *args: Any) -> Any:
    """Shutdown writes must land: retry through short database outages."""
    backoff = 0.1
    for _ in range(20):
        try:
            return func(*args)
        except (OperationalError, InterfaceError) as exc:
            logger.warning("database unavailable during shutdown (%s); retrying", exc)
            connections[using].close()
            time.sleep(backoff)  # backoff between retries; nothing to wait on here
            backoff = min(backoff * 2, MAX_DB_BACKOFF)
    return func(*args)


def say_goodbye(worker: WorkerLoop, exit_code: int) -> None:
    """Write the last metrics and events and mark the worker stopped; never raises."""
    worker_id = worker.config.worker_id
    for what, step in (
        ("write its last metrics", lambda: flush_at_stop(worker.recorder)),
        ("mark itself stopped", lambda: presence.unregister_worker(worker_id, worker.processed)),
        ("announce its stop", lambda: _announce_stop(worker)),
        # The duty thread has stopped: write the events it left.
        ("record its last events", event_stream.flush),
    ):
        try:
            step()
        except Exception:
            logger.warning("worker %s could not %s", worker_id, what, exc_info=True)
    connections.close_all()
    # A handler thread stuck past the shutdown timeout cannot be killed; its task is
    # already released (its late write will be fenced off), so do not wait for it.
    if worker.stranded_handlers:
        logging.shutdown()
        os._exit(exit_code)


def _announce_stop(worker: WorkerLoop) -> None:
    emit(
        signals.worker_stopped,
        name="worker_stopped",
        worker_id=worker.config.worker_id,
        message=f"worker {worker.config.worker_id} stopped after {worker.processed} task(s)",
        extra={"processed": worker.processed, "pid": os.getpid()},
    )
