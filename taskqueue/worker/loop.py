"""The claim loop: claim due tasks in batches, hand them to a pool, record outcomes.

The main thread owns the queue connection. Each turn it writes the outcomes of finished
tasks (all successes in one statement), claims the next batch (one statement), hands it to
the pool, and sleeps until a batch's worth of tasks finished, a NOTIFY arrives, or the poll
interval passes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.db import connections
from django.db.utils import DatabaseError, InterfaceError, OperationalError

from taskqueue import signals, store
from taskqueue.conf import settings as tq_settings
from taskqueue.events import emit
from taskqueue.monitoring import stream as event_stream
from taskqueue.monitoring.recorder import MetricsRecorder
from taskqueue.store import ClaimedTask, vendor
from taskqueue.store.transitions import Transition
from taskqueue.worker import outcomes, presence, shutdown
from taskqueue.worker.cancelling import CancelWatch
from taskqueue.worker.circuits import CircuitWatch
from taskqueue.worker.duties.runner import Duty, DutyThread
from taskqueue.worker.duties.schedules import schedule_duties, sync_at_start
from taskqueue.worker.gates import Gates
from taskqueue.worker.listener import ListenerThread
from taskqueue.worker.memory import over_ceiling, resident_mib
from taskqueue.worker.outcomes import Finished
from taskqueue.worker.pools.backlog import counts_against_breaker
from taskqueue.worker.pools.base import HandlerPool
from taskqueue.worker.pools.processes import ProcessPool
from taskqueue.worker.pools.threads import ThreadPool

logger = logging.getLogger("taskqueue.worker")

# Prefetch adapts to how long tasks take: the worker holds about this many seconds of work
# ahead per handler slot (at most MAX_AHEAD_PER_SLOT tasks). Fast tasks are then claimed
# and completed in large batches, one statement each, while slow ones are never hoarded
# away from idle workers.
PREFETCH_HORIZON = 0.05
MAX_AHEAD_PER_SLOT = 8
DURATION_SMOOTHING = 0.1  # weight of the newest task in the running mean duration
# While tasks are in hand, finished outcomes are written at least this often (seconds).
FLUSH_INTERVAL = 0.05
MAX_DB_BACKOFF = 5.0
POOLS = ("processes", "threads")


@dataclass
class WorkerConfig:
    worker_id: str
    queues: list[str]
    concurrency: int
    poll_interval: float
    shutdown_timeout: float
    heartbeat_interval: float
    rescue_interval: float = 15.0
    stale_after: float = 60.0
    burst: bool = False
    max_tasks: int | None = None
    pool: str = "processes"
    max_memory: float | None = None  # MiB per process
    cancel_grace: float = 10.0


class WorkerLoop:
    """One ``run_worker`` process."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.using = tq_settings.DATABASE
        self.pool: HandlerPool = (
            ProcessPool(config.concurrency, config.worker_id, self._finished, config.max_memory)
            if config.pool == "processes"
            else ThreadPool(config.concurrency, config.worker_id, self._finished)
        )
        self.rng = random.Random()
        self.wake_event = threading.Event()
        self.in_hand: dict[Any, ClaimedTask] = {}
        self.finished: deque[Finished] = deque()
        self.finished_lock = threading.Lock()
        # Until tasks finish, assume they are just fast enough for one task ahead per slot.
        self.mean_duration = PREFETCH_HORIZON
        self.claimed_total = 0
        self.processed = 0
        self.stopping = False
        self.force_stop = False
        self.signals_received = 0
        self.recycle_reason = ""
        self.stranded_handlers = False  # handler threads still running that cannot be stopped
        self.gates = Gates(self.using, config.poll_interval)
        self.cancel_watch = CancelWatch(config.cancel_grace, self._finished, config.worker_id)
        self.recorder = MetricsRecorder(config.worker_id, self.using)
        self.circuit_watch = CircuitWatch(self.using, config.worker_id)
        # Claimed tasks an open circuit sends back, until the store has taken them back.
        self.sending_back: list[ClaimedTask] = []

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal, ``--burst`` drained, ``--max-tasks`` reached); exit code.

        0 after a normal stop. 1 after an unexpected error (a database connection error is
        not one: it is waited out): the worker then claims nothing more, drains, releases
        what it still holds, closes its pool and marks itself stopped, like on SIGTERM.
        """
        self._install_signal_handlers()
        exit_code = 0
        side_threads: list[DutyThread | ListenerThread] = []
        try:
            self._start(side_threads)
            self._loop()
        except Exception:
            exit_code = 1
            self.stopping = True
            logger.exception(
                "worker %s hit an unexpected error: claiming no more, finishing and releasing "
                "what it holds, then exiting 1",
                self.config.worker_id,
            )
            # The error may have left the session unusable: the drain starts a fresh one.
            with contextlib.suppress(DatabaseError):
                connections[self.using].close()
        finally:
            try:
                if not shutdown.drain(self):
                    exit_code = 1
            finally:
                for thread in side_threads:
                    thread.stop()
                shutdown.say_goodbye(self, exit_code)
        return exit_code

    def _start(self, side_threads: list[DutyThread | ListenerThread]) -> None:
        worker_id = self.config.worker_id
        # Events for the live stream wait in memory; the duty thread writes them in bulk.
        event_stream.event_buffer.start_buffering()
        presence.register_worker(worker_id, self.config.queues, self.config.concurrency)
        self.recorder.sync_clock()
        self.recorder.count_all(store.rescue_own_tasks(worker_id, random.Random()).transitions)
        sync_at_start()
        duties = DutyThread(
            self.using,
            [
                Duty(
                    "heartbeat",
                    self.config.heartbeat_interval,
                    lambda: presence.heartbeat(worker_id, self.processed),
                ),
                Duty("rescue", self.config.rescue_interval, self._rescue),
                Duty("workflows", self.config.rescue_interval, store.sweep_waiting_tasks),
                Duty("metrics", tq_settings.METRICS["FLUSH_INTERVAL"], self.recorder.flush),
                Duty("events", event_stream.FLUSH_INTERVAL, event_stream.flush),
                *schedule_duties(self.wake),
            ],
            self.rng,
        )
        side_threads.append(duties)
        duties.start()  # heartbeats go on while the handler processes start
        self.pool.start()
        if vendor(self.using) == "postgresql" and not self.config.burst:
            listener = ListenerThread(self.using, self.config.queues, self.wake)
            side_threads.append(listener)
            listener.start()
        # Logged by the taskqueue.lifecycle receiver, like every event.
        emit(
            signals.worker_started,
            name="worker_started",
            worker_id=worker_id,
            message=(
                f"worker {worker_id} started, serving queues {','.join(self.config.queues)} "
                f"with concurrency {self.config.concurrency} ({self.config.pool})"
            ),
            extra={
                "queues": list(self.config.queues),
                "concurrency": self.config.concurrency,
                "pool": self.config.pool,
                "pid": os.getpid(),
            },
        )

    def _rescue(self) -> None:
        rescued = store.rescue_stale_tasks(
            self.config.stale_after, self.config.worker_id, random.Random()
        )
        self.recorder.count_all(rescued.transitions)
        if rescued.retried:
            self.wake()  # some may be due at once: claim them

    def wake(self) -> None:
        self.gates.woken()
        self.wake_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        name = signal.Signals(signum).name
        if self.signals_received == 1:
            logger.info("received %s: finishing running tasks, claiming no more", name)
        else:
            self.force_stop = True
            logger.info("received %s again: releasing running tasks now", name)
        self.stopping = True
        self.wake()

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.1
        while not self.stopping:
            try:
                tried, claimed = self._flush_and_claim()
                backoff = 0.1
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable (%s); retrying in %.1f s", exc, backoff)
                connections[self.using].close()
                self.wake_event.wait(backoff)
                self.wake_event.clear()
                backoff = min(backoff * 2, MAX_DB_BACKOFF)
                continue
            queue_empty = tried and not claimed
            if (
                self.config.burst
                and queue_empty
                and not self.in_hand
                and not self.finished
                # Due but held back by a rate or concurrency limit: wait for the limit.
                and not self.gates.limited_work_is_due(self.config.queues)
            ):
                return
            if self._recycling() and not self.in_hand and not self.finished:
                return  # recycled: every task claimed before has finished
            self._wait(claimed_any=bool(claimed))

    def _flush_and_claim(self) -> tuple[bool, int]:
        """Record finished outcomes, then claim more: (tried to claim, claimed)."""
        self.flush_finished()
        self.cancel_watch.check(self.in_hand, self.pool)
        self._send_back_for_open_circuits()
        free = self._free_slots()
        if free == 0:
            return False, 0
        claimed = store.claim_due_tasks(self.config.worker_id, self.config.queues, free)
        if len(claimed) < free:
            claimed += self.gates.claim(
                self.config.worker_id, self.config.queues, free - len(claimed)
            )
        self._dispatch(claimed)
        # DEBUG=True logs every query on this long-lived connection: keep memory flat.
        connections[self.using].queries_log.clear()
        return True, len(claimed)

    @property
    def capacity(self) -> int:
        """Tasks to hold at once: one per slot plus the adaptive prefetch."""
        ahead = int(PREFETCH_HORIZON / max(self.mean_duration, 1e-6))
        return self.config.concurrency * (1 + min(MAX_AHEAD_PER_SLOT, ahead))

    @property
    def batch_threshold(self) -> int:
        """Claim (and wake up to write outcomes) once this many tasks' room is free."""
        return max(1, self.capacity // 4)

    def _free_slots(self) -> int:
        """How many tasks to claim now (0: wait for a batch's worth of room)."""
        if self.stopping or self.recycle_reason:
            return 0
        held = len(self.in_hand)
        free = self.capacity - held
        if self.config.max_tasks is not None:
            free = min(free, self.config.max_tasks - self.claimed_total)
        # Every thread busy: wait for a batch's worth of room rather than claim one by one.
        if held >= self.config.concurrency and free < self.batch_threshold:
            return 0
        return max(free, 0)

    def _wait(self, claimed_any: bool) -> None:
        if claimed_any and self._free_slots() > 0:
            return  # more may be due right now: claim again without sleeping
        timeout = FLUSH_INTERVAL if self.in_hand else self.config.poll_interval
        timeout = min(timeout, max(self.gates.seconds_until_next(), 0.0))
        self.wake_event.wait(timeout)
        self.wake_event.clear()

    def _recycling(self) -> bool:
        """Past --max-tasks or the memory ceiling: claim no more, finish, exit 0."""
        if not self.recycle_reason:
            if self._reached_max_tasks():
                self.recycle_reason = f"claimed {self.claimed_total} task(s) (--max-tasks)"
            elif self.processed and over_ceiling(self.config.max_memory):
                self.recycle_reason = (
                    f"holds {resident_mib():.0f} MiB, over MAX_MEMORY {self.config.max_memory:g}"
                )
            if self.recycle_reason:
                logger.info("worker %s recycles: it %s", self.config.worker_id, self.recycle_reason)
        return bool(self.recycle_reason)

    def _reached_max_tasks(self) -> bool:
        return self.config.max_tasks is not None and self.claimed_total >= self.config.max_tasks

    # --- running tasks -------------------------------------------------------------------

    def _dispatch(self, claimed: list[ClaimedTask]) -> None:
        self.claimed_total += len(claimed)
        for task in claimed:
            self.in_hand[task.id] = task
            self.pool.submit(task)

    def _finished(self, finished: Finished) -> None:
        """Pool callback (any thread): queue an outcome for the main thread to write."""
        with self.finished_lock:
            self.finished.append(finished)
            waiting = len(self.finished)
        # Wake the loop once a batch's worth is done, or at once when nothing else runs.
        if waiting >= self.batch_threshold or waiting >= len(self.in_hand):
            self.wake()

    def _send_back_for_open_circuits(self) -> None:
        """Return unstarted tasks of types whose circuit opened, attempt given back."""
        with self.finished_lock:
            unrecorded = {
                item.task.task_type
                for item in self.finished
                if counts_against_breaker(item.task.task_type, item.outcome)
            }
        self.sending_back += self.circuit_watch.check(self.in_hand, self.pool, unrecorded)
        if self.sending_back:
            # On a connection error they stay here (and in hand) for the next turn.
            store.release_tasks(self.sending_back)
            for task in self.sending_back:
                self.in_hand.pop(task.id, None)
            self.sending_back = []

    def _take_finished(self) -> list[Finished]:
        with self.finished_lock:
            taken = list(self.finished)
            self.finished.clear()
        return taken

    def flush_finished(self) -> None:
        """Write finished outcomes; on a connection error keep the unwritten ones for later.

        An outcome the database refuses is dead-lettered in its place (``outcomes.record``).
        """
        pending = self._take_finished()
        if not pending:
            return
        written: list[Transition] = []
        dropped: list[Transition] = []
        try:
            outcomes.record(pending, written, dropped, self.config.worker_id)
        finally:
            if pending:
                with self.finished_lock:
                    self.finished.extendleft(reversed(pending))
            for transition in dropped:
                # The store logged why (the claim was lost); nothing happened to announce.
                self.in_hand.pop(transition.task.id, None)
            self._forget_written(written)

    def _forget_written(self, written: list[Transition]) -> None:
        for transition in written:
            self.in_hand.pop(transition.task.id, None)
            self.processed += 1
            duration = transition.duration or 0.0  # a worker's own outcomes always have one
            self.mean_duration += DURATION_SMOOTHING * (duration - self.mean_duration)
            self.recorder.count(transition)
            store.announce(transition)
