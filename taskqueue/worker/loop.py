"""The claim loop: claim due tasks in batches, run them on a thread pool, record outcomes.

The main thread owns the queue connection: it flushes finished outcomes (all successes in
one statement) and claims the next batch in one transaction, then sleeps until a handler
finishes, a NOTIFY arrives, or the poll interval passes.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.db.utils import DatabaseError, InterfaceError, OperationalError

from taskqueue import signals, store
from taskqueue.conf import settings as tq_settings
from taskqueue.context import TaskContext
from taskqueue.events import Severity, emit
from taskqueue.sql import ClaimedTask, vendor
from taskqueue.worker import presence
from taskqueue.worker.executor import DEAD, RETRY, SUCCEEDED, AsyncRunner, Outcome, execute
from taskqueue.worker.listener import ListenerThread

logger = logging.getLogger("taskqueue.worker")

# Tasks held per handler slot: one running plus one claimed ahead, so a slot never waits on
# a database round trip between two tasks.
PREFETCH_FACTOR = 2
# While tasks are in hand, finished outcomes are flushed at least this often (seconds).
FLUSH_INTERVAL = 0.05
MAX_DB_BACKOFF = 5.0


@dataclass
class WorkerConfig:
    worker_id: str
    queues: list[str]
    concurrency: int
    poll_interval: float
    shutdown_timeout: float
    heartbeat_interval: float
    burst: bool = False
    max_tasks: int | None = None


@dataclass
class _InHand:
    task: ClaimedTask
    future: Future[Any]
    started: threading.Event = field(default_factory=threading.Event)


class Worker:
    """One ``run_worker`` process."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.using = tq_settings.DATABASE
        self.capacity = config.concurrency * PREFETCH_FACTOR
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="taskqueue-task")
        self.async_runner = AsyncRunner()
        self.rng = random.Random()
        self.wake_event = threading.Event()
        self.in_hand: dict[Any, _InHand] = {}
        self.finished: deque[tuple[ClaimedTask, Outcome, TaskContext | None]] = deque()
        self.claimed_total = 0
        self.processed = 0
        self.stopping = False
        self.force_stop = False
        self.signals_received = 0
        self._lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal, ``--burst`` drained, ``--max-tasks`` reached); exit code."""
        self._install_signal_handlers()
        presence.register_worker(self.config.worker_id, self.config.queues, self.config.concurrency)
        heartbeat = presence.HeartbeatThread(
            self.config.worker_id, self.config.heartbeat_interval, lambda: self.processed
        )
        heartbeat.start()
        listener = None
        if vendor(self.using) == "postgresql" and not self.config.burst:
            listener = ListenerThread(self.using, self.config.queues, self.wake)
            listener.start()
        emit(
            signals.worker_started,
            name="worker_started",
            worker_id=self.config.worker_id,
            message=f"worker {self.config.worker_id} started",
        )
        logger.info(
            "worker %s serving queues %s with concurrency %d",
            self.config.worker_id,
            ",".join(self.config.queues),
            self.config.concurrency,
        )
        try:
            self._loop()
            self._drain()
        finally:
            heartbeat.stop()
            if listener is not None:
                listener.stop()
            self._say_goodbye()
        return 0

    def wake(self) -> None:
        self.wake_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            logger.info(
                "received %s: finishing running tasks, claiming no more",
                signal.Signals(signum).name,
            )
        else:
            self.force_stop = True
            logger.info(
                "received %s again: releasing running tasks now", signal.Signals(signum).name
            )
        self.stopping = True
        self.wake()

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.1
        while not self.stopping:
            try:
                claimed = self._flush_and_claim()
                backoff = 0.1
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable (%s); retrying in %.1f s", exc, backoff)
                connections[self.using].close()
                self.wake_event.wait(backoff)
                self.wake_event.clear()
                backoff = min(backoff * 2, MAX_DB_BACKOFF)
                continue
            if self.config.burst and not claimed and not self.in_hand and not self.finished:
                return
            if self._reached_max_tasks():
                self.stopping = True
                return
            self._wait(claimed_any=bool(claimed))

    def _flush_and_claim(self) -> int:
        free = self._free_slots()
        outcomes = self._take_finished()
        if not outcomes and free == 0:
            return 0
        with transaction.atomic(using=self.using):
            self._record(outcomes)
            claimed = store.claim_due_tasks(self.config.worker_id, self.config.queues, free)
        self._after_record(outcomes)
        self._dispatch(claimed)
        connections[self.using].queries_log.clear()
        return len(claimed)

    def _free_slots(self) -> int:
        if self.stopping:
            return 0
        free = self.capacity - len(self.in_hand)
        if self.config.max_tasks is not None:
            free = min(free, self.config.max_tasks - self.claimed_total)
        # Claim in batches: wait until at least one slot's worth of the prefetch is free.
        if self.in_hand and free < self.config.concurrency and free < self.capacity:
            return 0
        return max(free, 0)

    def _wait(self, claimed_any: bool) -> None:
        if claimed_any and self._free_slots() > 0:
            return  # more may be due right now: claim again without sleeping
        timeout = FLUSH_INTERVAL if self.in_hand or self.finished else self.config.poll_interval
        self.wake_event.wait(timeout)
        self.wake_event.clear()

    def _reached_max_tasks(self) -> bool:
        return self.config.max_tasks is not None and self.claimed_total >= self.config.max_tasks

    # --- running tasks -------------------------------------------------------------------

    def _dispatch(self, claimed: list[ClaimedTask]) -> None:
        self.claimed_total += len(claimed)
        for task in claimed:
            entry = _InHand(task=task, future=Future())
            entry.future = self.pool.submit(self._run_one, entry)
            self.in_hand[task.id] = entry

    def _run_one(self, entry: _InHand) -> None:
        entry.started.set()
        task = entry.task
        store.emit_for(task, signals.task_started, name="started", worker_id=self.config.worker_id)
        try:
            outcome, context = execute(task, self.config.worker_id, self.async_runner, self.rng)
            if context is not None:
                try:
                    context.flush_progress()
                except DatabaseError:
                    logger.warning("could not save the progress of task %s", task.id)
        finally:
            close_old_connections()
            for conn in connections.all(initialized_only=True):
                conn.queries_log.clear()
        with self._lock:
            self.finished.append((task, outcome, context))
            done_waiting = len(self.finished)
        # Wake the loop once a batch's worth is done, or at once when nothing else runs.
        if done_waiting >= self.config.concurrency or done_waiting >= len(self.in_hand):
            self.wake()

    def _take_finished(self) -> list[tuple[ClaimedTask, Outcome, TaskContext | None]]:
        with self._lock:
            taken = list(self.finished)
            self.finished.clear()
        return taken

    def _record(self, outcomes: list[tuple[ClaimedTask, Outcome, TaskContext | None]]) -> None:
        """Write outcomes: successes in one statement, failures one by one (rarer)."""
        successes = [
            (task, outcome.result) for task, outcome, _ in outcomes if outcome.kind == SUCCEEDED
        ]
        if successes:
            store.complete_tasks(successes)
        for task, outcome, _ in outcomes:
            if outcome.kind == RETRY:
                store.retry_later(
                    task,
                    worker_id=self.config.worker_id,
                    delay=outcome.delay,
                    error_type=outcome.error_type,
                    error=outcome.error,
                    traceback=outcome.traceback,
                    outcome=outcome.attempt_outcome,
                )
            elif outcome.kind == DEAD:
                store.dead_letter(
                    task,
                    worker_id=self.config.worker_id,
                    error_type=outcome.error_type,
                    error=outcome.error,
                    traceback=outcome.traceback,
                    outcome=outcome.attempt_outcome,
                )

    def _after_record(
        self, outcomes: list[tuple[ClaimedTask, Outcome, TaskContext | None]]
    ) -> None:
        for task, outcome, _ in outcomes:
            self.in_hand.pop(task.id, None)
            self.processed += 1
            self._announce(task, outcome)

    def _announce(self, task: ClaimedTask, outcome: Outcome) -> None:
        common = {"worker_id": self.config.worker_id, "duration": outcome.duration}
        if outcome.kind == SUCCEEDED:
            store.emit_for(task, signals.task_succeeded, name="succeeded", **common)
            return
        failure = {
            **common,
            "error_type": outcome.error_type,
            "message": outcome.error,
            "traceback": outcome.traceback,
        }
        log_extra = {
            "task_id": str(task.id),
            "task_type": task.task_type,
            "attempt": task.attempts,
            "duration_ms": round(outcome.duration * 1000),
        }
        store.emit_for(
            task, signals.task_failed, name="failed", severity=Severity.WARNING, **failure
        )
        if outcome.attempt_outcome == "timed_out":
            store.emit_for(
                task, signals.task_timed_out, name="timed_out", severity=Severity.WARNING, **failure
            )
        if outcome.kind == RETRY:
            logger.info(
                "task %s (%s) attempt %d failed: %s; retrying in %.1f s",
                task.id,
                task.task_type,
                task.attempts,
                outcome.error,
                outcome.delay,
                extra=log_extra,
            )
            store.emit_for(
                task,
                signals.task_retry_scheduled,
                name="retry_scheduled",
                severity=Severity.WARNING,
                **failure,
            )
        else:
            logger.error(
                "task %s (%s) dead-lettered after attempt %d: %s",
                task.id,
                task.task_type,
                task.attempts,
                outcome.error,
                extra=log_extra,
            )
            store.emit_for(
                task,
                signals.task_dead_lettered,
                name="dead_lettered",
                severity=Severity.ERROR,
                **failure,
            )

    # --- stopping ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Stop claiming; let running tasks finish up to the shutdown timeout; release the rest."""
        not_started = [
            e.task for e in self.in_hand.values() if not e.started.is_set() and e.future.cancel()
        ]
        if not_started:
            self._with_retries(store.release_tasks, not_started)
            for task in not_started:
                self.in_hand.pop(task.id, None)
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.in_hand and not self.force_stop and time.monotonic() < deadline:
            self.wake_event.wait(min(FLUSH_INTERVAL, max(deadline - time.monotonic(), 0)))
            self.wake_event.clear()
            self._flush_outcomes_only()
        self._flush_outcomes_only()
        leftover = [entry.task for entry in self.in_hand.values()]
        if leftover:
            released = self._with_retries(store.release_tasks, leftover)
            logger.warning("released %d task(s) still running at shutdown", released)
            self.in_hand.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.async_runner.close()

    def _flush_outcomes_only(self) -> None:
        outcomes = self._take_finished()
        if outcomes:
            self._with_retries(self._record_atomically, outcomes)
            self._after_record(outcomes)

    def _record_atomically(
        self, outcomes: list[tuple[ClaimedTask, Outcome, TaskContext | None]]
    ) -> None:
        with transaction.atomic(using=self.using):
            self._record(outcomes)

    def _with_retries(self, func: Any, *args: Any) -> Any:
        """Shutdown writes must land: retry through short database outages."""
        backoff = 0.1
        for _ in range(20):
            try:
                return func(*args)
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable during shutdown (%s); retrying", exc)
                connections[self.using].close()
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_DB_BACKOFF)
        return func(*args)

    def _say_goodbye(self) -> None:
        try:
            presence.unregister_worker(self.config.worker_id, self.processed)
        except DatabaseError:
            logger.warning("could not mark worker %s stopped", self.config.worker_id, exc_info=True)
        emit(
            signals.worker_stopped,
            name="worker_stopped",
            worker_id=self.config.worker_id,
            message=f"worker {self.config.worker_id} stopped after {self.processed} task(s)",
        )
        logger.info("worker %s stopped after %d task(s)", self.config.worker_id, self.processed)
        connections.close_all()
        # A handler thread stuck past the shutdown timeout cannot be killed; its task is
        # already released (its late write will be fenced off), so do not wait for it.
        if any(t.name.startswith("taskqueue-task") and t.is_alive() for t in threading.enumerate()):
            logging.shutdown()
            os._exit(0)
