"""The thread pool: handlers in threads of the worker, light but unable to stop an overrun.

A sync handler that overruns its timeout cannot be stopped in a thread; ``ProcessPool``
(``taskqueue.worker.pools.processes``) is the pool that can kill one.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid

from django.db import connections

from taskqueue.core.outcome import Outcome
from taskqueue.store import ClaimedTask
from taskqueue.worker.executor import AsyncRunner
from taskqueue.worker.outcomes import Finished
from taskqueue.worker.pools.backlog import Backlog, BacklogHolder
from taskqueue.worker.pools.base import OnFinished, StopResult, run_task

logger = logging.getLogger("taskqueue.worker")


class ThreadPool(BacklogHolder):
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
            if reason is not None and finished.outcome.failed:
                # The CancelledError came from stop(): say why, instead of a failure.
                outcome = Outcome.cancelled(finished.outcome.duration, reason)
                finished = Finished(task, outcome, finished.context)
            with self.lock:
                # Before this thread takes its next task: a failure its type's circuit
                # breaker counts holds that type back until the loop has recorded it.
                self.backlog.note_outcome(task.task_type, finished.outcome)
            self.on_finished(finished)
        connections.close_all()

    def _on_release(self) -> None:
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
