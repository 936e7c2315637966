"""Where handlers run: the pool interface and the task runner every pool shares.

The claim loop hands claimed tasks to a pool and gets each outcome back through a
callback. ``ProcessPool`` (``taskqueue.worker.pools.processes``) runs handlers in child
processes that can be killed at their timeout; ``ThreadPool`` runs them in threads of the
worker, lighter but unable to stop a sync handler that overruns.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Collection
from typing import Literal, Protocol

from django.db import DatabaseError, close_old_connections, connections

from taskqueue import signals, store
from taskqueue.store import ClaimedTask
from taskqueue.worker.executor import (
    AsyncRunner,
    exception_message,
    execute,
    failed_attempt,
)
from taskqueue.worker.outcomes import Finished

logger = logging.getLogger("taskqueue.worker")

OnFinished = Callable[[Finished], None]
# What ``HandlerPool.stop`` did: stopped the handler (its cancelled outcome follows through
# the callback), could not (a sync handler in a thread), or found it not running here.
StopResult = Literal["stopped", "unstoppable", "not running"]


class HandlerPool(Protocol):
    """What the claim loop needs from a pool of handler slots."""

    def start(self) -> None: ...

    def submit(self, task: ClaimedTask) -> None:
        """Run ``task`` in the next free slot (queued here until one is free)."""

    def take_not_started(self) -> list[ClaimedTask]:
        """Withdraw the submitted tasks no slot has started yet."""

    def withdraw(self, task_ids: Collection[uuid.UUID]) -> list[ClaimedTask]:
        """Withdraw those of ``task_ids`` that are submitted and not started yet."""

    def held_types(self) -> set[str]:
        """Task types held back after a failure their circuit breaker counts."""

    def release_held(self, task_types: Collection[str]) -> None:
        """Let the held-back tasks of ``task_types`` start (their failures are recorded)."""

    def stop(self, task_id: uuid.UUID, reason: str) -> StopResult:
        """Stop the running handler of one task (cancelled after its grace period)."""

    def stop_running(self) -> bool:
        """Stop the handlers still running; False when they could not be stopped."""

    def close(self) -> None: ...


def run_task(
    task: ClaimedTask, worker_id: str, async_runner: AsyncRunner, rng: random.Random
) -> Finished:
    """Run one task in this thread and return its outcome (never raises)."""
    started = time.monotonic()
    context = None
    try:
        store.emit_for(task, signals.task_started, name="started", worker_id=worker_id)
        outcome, context = execute(task, worker_id, async_runner, rng)
        if context is not None:
            try:
                context.flush_progress()
            except DatabaseError:
                logger.warning("could not save the progress of task %s", task.id)
    except Exception as exc:
        # A fault of the worker around the handler, not of the handler: without an outcome
        # the task would stay in hand (and ``running``) until the worker stops.
        logger.exception(
            "could not run task %s",
            task.id,
            extra={"task_id": str(task.id), "task_type": task.task_type},
        )
        outcome = failed_attempt(
            task,
            rng,
            duration=time.monotonic() - started,
            error_type="WorkerError",
            error=f"the worker failed around the handler: {type(exc).__name__}: "
            f"{exception_message(exc)}",
        )
    finally:
        # As Django does after a request: drop broken or expired connections, and forget
        # logged queries so DEBUG=True does not grow memory.
        close_old_connections()
        for conn in connections.all(initialized_only=True):
            conn.queries_log.clear()
    return Finished(task, outcome, context)
