"""Where handlers run: the pool interface, the shared task runner, and the thread pool.

The claim loop hands claimed tasks to a pool and gets each outcome back through a
callback. ``ProcessPool`` (``taskqueue.worker.processes``) runs handlers in child
processes that can be killed at their timeout; ``ThreadPool`` runs them in threads of the
worker, lighter but unable to stop a sync handler that overruns.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection
from typing import Literal, Protocol

from django.db import DatabaseError, close_old_connections, connections

from taskqueue import signals, store
from taskqueue.sql import ClaimedTask
from taskqueue.worker.backlog import Backlog
from taskqueue.worker.executor import (
    DEAD,
    RETRY,
    AsyncRunner,
    cancelled_outcome,
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


class ThreadPool:
    """Handlers in ``size`` threads of the worker process."""

    def __init__(self, size: int, worker_id: str, on_finished: OnFinished) -> None:
        self.size = size
        self.worker_id = worker_id
        self.on_finished = on_finished
        self.backlog = Backlog()
        self.closing = False
        self.async_runner = AsyncRunner()
        self.threads = [
            threading.Thread(target=self._serve, name=f"taskqueue-task-{slot}", daemon=True)
            for slot in range(size)
        ]
        self.busy = 0
        # Guards the backlog and the counters; threads wait on it for a task they may start.
        self.lock = threading.Condition()
        self.running: set[uuid.UUID] = set()
        self.stopped: dict[uuid.UUID, str] = {}  # task id -> why it was cancelled

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, task: ClaimedTask) -> None:
        with self.lock:
            self.backlog.add(task)
            self.lock.notify()

    def _next_task(self) -> ClaimedTask | None:
        """Wait for a task this thread may start (None: the pool is closing)."""
        with self.lock:
            while not self.closing:
                task = self.backlog.next()
                if task is not None:
                    self.busy += 1
                    self.running.add(task.id)
                    return task
                self.lock.wait()
        return None

    def _serve(self) -> None:
        rng = random.Random()
        while (task := self._next_task()) is not None:
            try:
                finished = run_task(task, self.worker_id, self.async_runner, rng)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.running.discard(task.id)
                    reason = self.stopped.pop(task.id, None)
            if reason is not None and finished.outcome.kind in (RETRY, DEAD):
                # The CancelledError came from stop(): say why, instead of a failure.
                outcome = cancelled_outcome(finished.outcome.duration, reason)
                finished = Finished(task, outcome, finished.context)
            with self.lock:
                # Before this thread takes its next task: a failure its type's circuit
                # breaker counts holds that type back until the loop has recorded it.
                self.backlog.note_outcome(task.task_type, finished.outcome)
            self.on_finished(finished)
        connections.close_all()

    def take_not_started(self) -> list[ClaimedTask]:
        with self.lock:
            return self.backlog.take_all()

    def withdraw(self, task_ids: Collection[uuid.UUID]) -> list[ClaimedTask]:
        with self.lock:
            return self.backlog.take(task_ids)

    def held_types(self) -> set[str]:
        with self.lock:
            return set(self.backlog.held)

    def release_held(self, task_types: Collection[str]) -> None:
        with self.lock:
            if self.backlog.release(task_types):
                self.lock.notify_all()

    def stop(self, task_id: uuid.UUID, reason: str) -> StopResult:
        with self.lock:
            if task_id not in self.running:
                return "not running"
            self.stopped[task_id] = reason
        # Only a coroutine can be cancelled; a thread running sync code cannot be stopped.
        if self.async_runner.cancel(task_id):
            return "stopped"
        with self.lock:
            self.stopped.pop(task_id, None)
        return "unstoppable"

    def stop_running(self) -> bool:
        # A thread cannot be killed: report whether any handler is still running.
        with self.lock:
            return self.busy == 0

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.async_runner.close()
