"""Handlers in child processes, one per slot, so a handler past its timeout can be stopped.

A collector thread waits on every child's pipe at once: it receives outcomes, hands the
next queued task to the child that became free, kills a child whose handler ran past its
deadline (and terminates its database sessions, so a long query stops too), and starts a
replacement for any child that died. Children are started with ``spawn``: a clean
interpreter that sets Django up itself, safe while the worker's threads are running.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from django.db import connections

from taskqueue.core.outcome import Outcome
from taskqueue.models import AttemptOutcome
from taskqueue.monitoring import stream as event_stream
from taskqueue.store import ClaimedTask
from taskqueue.store.backends import terminate_sessions
from taskqueue.worker.executor import failed_attempt
from taskqueue.worker.outcomes import Finished
from taskqueue.worker.pools import wire
from taskqueue.worker.pools.backlog import Backlog, BacklogHolder
from taskqueue.worker.pools.base import OnFinished, StopResult
from taskqueue.worker.pools.child import child_main
from taskqueue.worker.pools.sessions import application_name

logger = logging.getLogger("taskqueue.worker.pools.processes")

START_TIMEOUT = 60.0  # seconds a new child may take to import and set Django up
COLLECT_TICK = 1.0  # the collector re-checks deadlines at least this often
STOP_GRACE = 5.0  # seconds idle children get to exit on their own at close
CHILD_NAME = "taskqueue-child-"


@dataclass
class _Child:
    slot: int
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: ClaimedTask | None = None
    started: float = 0.0
    deadline: float | None = None
    spawned: float = field(default_factory=time.monotonic)


class ProcessPool(BacklogHolder):
    """``size`` child processes, each running one handler at a time."""

    def __init__(
        self, size: int, worker_id: str, on_finished: OnFinished, max_memory: float | None = None
    ) -> None:
        self.size = size
        self.max_memory = max_memory
        self.worker_id = worker_id
        self.on_finished = on_finished
        self.context = multiprocessing.get_context("spawn")
        self.children: list[_Child] = []
        self.backlog = Backlog()
        self.lock = threading.RLock()
        self.rng = random.Random()
        self.closed = False
        self.all_ready = threading.Event()
        self.wake_read, self.wake_write = os.pipe()
        self.collector = threading.Thread(
            target=self._collect, name="taskqueue-collector", daemon=True
        )

    # --- the HandlerPool interface ---------------------------------------------------------

    def start(self) -> None:
        """Start the children and wait (up to START_TIMEOUT) until they can take tasks.

        Claiming before then would hold tasks that no process can start yet, while another
        worker might be free to run them.
        """
        with self.lock:
            # One by one, so a failed spawn leaves the started ones where close() finds them.
            for slot in range(self.size):
                self.children.append(self._spawn(slot))
        self.collector.start()
        if not self.all_ready.wait(START_TIMEOUT):
            logger.warning(
                "handler processes of worker %s were not all ready within %g s",
                self.worker_id,
                START_TIMEOUT,
            )

    def submit(self, task: ClaimedTask) -> None:
        with self.lock:
            self.backlog.add(task)
            self._dispatch()

    def _on_release(self) -> None:
        self._dispatch()

    def stop(self, task_id: uuid.UUID, reason: str) -> StopResult:
        with self.lock:
            child = next(
                (c for c in self.children if c.task is not None and c.task.id == task_id), None
            )
            if child is None:
                return "not running"
            if child.conn.poll():
                # Its outcome is already in the pipe: the handler finished, nothing to stop.
                self._receive(child)
                if child not in self.children or child.task is None or child.task.id != task_id:
                    return "not running"
            task = child.task
            self._kill(child)
            child.task = None
            self._replace(child, "was stopped: its task was cancelled")
            outcome = Outcome.cancelled(time.monotonic() - child.started, reason)
            self.on_finished(Finished(task, outcome, None))
            self._dispatch()
        self._wake_collector()  # it must watch the new child's pipe
        return "stopped"

    def stop_running(self) -> bool:
        with self.lock:
            for child in self.children:
                if child.task is not None:
                    self._kill(child)
                    child.task = None
        return True

    def close(self) -> None:
        """Stop every child (killing those that do not stop) and the collector; idempotent."""
        # Runs on every way out of the worker: the children ignore SIGTERM, so one left alive
        # would hang multiprocessing's exit handler, which joins them all.
        with self.lock:
            if self.closed:
                return
            self.closed = True  # from now on no child is replaced
            for child in self.children:
                if not child.ready:
                    child.process.kill()  # still setting Django up: it holds no work
                    continue
                try:
                    child.conn.send_bytes(wire.encode({"kind": "stop"}))
                except OSError:
                    pass
            children = list(self.children)
        self._wake_collector()
        deadline = time.monotonic() + STOP_GRACE
        for child in children:
            child.process.join(max(deadline - time.monotonic(), 0))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
        _kill_stray_children()
        if self.collector.ident is not None:  # not started when start-up failed early
            self.collector.join(5)
        os.close(self.wake_read)
        os.close(self.wake_write)

    def _wake_collector(self) -> None:
        try:
            os.write(self.wake_write, b"x")
        except OSError:
            pass  # closed: the collector is gone

    # --- children ------------------------------------------------------------------------

    def _spawn(self, slot: int) -> _Child:
        parent_conn, child_conn = self.context.Pipe()
        process = self.context.Process(
            target=child_main,
            args=(
                child_conn,
                os.environ.get("DJANGO_SETTINGS_MODULE", ""),
                self.worker_id,
                slot,
                os.getpid(),
                self.max_memory,
            ),
            name=f"{CHILD_NAME}{slot}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Child(slot=slot, process=process, conn=parent_conn)

    def _dispatch(self) -> None:
        """Hand queued tasks to free children (call with the lock held)."""
        for child in self.children:
            if not child.ready or child.task is not None:
                continue
            task = self.backlog.next()
            if task is None:
                return
            try:
                child.conn.send_bytes(wire.encode(wire.task_message(task)))
            except OSError:
                self.backlog.put_back(task)
                self._replace(child, "its pipe broke")
                continue
            child.task = task
            child.started = time.monotonic()
            child.deadline = child.started + task.timeout if task.timeout else None
            # The stream's record of the start (the child sends the signal itself).
            event_stream.record_started(task, self.worker_id)

    def _replace(self, child: _Child, why: str) -> None:
        """Start a new child in ``child``'s slot (call with the lock held)."""
        if child.process.is_alive():
            child.process.kill()
        child.process.join(5)
        child.conn.close()
        if self.closed:
            return
        logger.warning(
            "handler process %d of worker %s %s; starting a new one",
            child.slot,
            self.worker_id,
            why,
        )
        self.children[self.children.index(child)] = self._spawn(child.slot)

    def _kill(self, child: _Child) -> None:
        """Stop a child at once, and the database sessions its handler had open."""
        child.process.kill()
        child.process.join(5)
        terminate_sessions(application_name(self.worker_id, child.slot))

    # --- the collector thread ------------------------------------------------------------

    def _collect(self) -> None:
        try:
            while not self.closed:
                try:
                    self._collect_once()
                except Exception:
                    # The collector must outlive any surprise (a failed spawn, say): without
                    # it no outcome arrives and no deadline is enforced.
                    logger.exception(
                        "handler pool of worker %s hit an error; carrying on", self.worker_id
                    )
                    time.sleep(COLLECT_TICK)  # back off; nothing to wait on after a failure
        finally:
            connections.close_all()

    def _collect_once(self) -> None:
        with self.lock:
            by_conn = {child.conn: child for child in self.children}
        ready = wait([*by_conn, self.wake_read], timeout=self._next_tick())
        for source in ready:
            if source == self.wake_read:
                os.read(self.wake_read, 4096)
            else:
                self._receive(by_conn[source])  # type: ignore[index]
        self._enforce_deadlines()

    def _next_tick(self) -> float:
        now = time.monotonic()
        with self.lock:
            deadlines = [c.deadline for c in self.children if c.deadline and c.task]
            starting = [c.spawned + START_TIMEOUT for c in self.children if not c.ready]
        upcoming = [*deadlines, *starting]
        return max(0.0, min([now + COLLECT_TICK, *upcoming]) - now)

    def _receive(self, child: _Child) -> None:
        with self.lock:
            if child not in self.children:
                return  # already replaced
            try:
                message = wire.decode(child.conn.recv_bytes())
            except (EOFError, OSError):
                self._child_died(child)
                return
            if message["kind"] == "ready":
                child.ready = True
                if all(other.ready for other in self.children):
                    self.all_ready.set()
                self._dispatch()
                return
            task, child.task, child.deadline = child.task, None, None
            if "recycle" in message:
                self._replace(child, f"recycles: {message['recycle']}")
            outcome = None
            if task is not None:
                try:
                    outcome = wire.outcome_from_message(message)
                except (KeyError, TypeError, ValueError):
                    logger.exception("handler process %d sent an unreadable outcome", child.slot)
                else:
                    # Before the freed slot takes its next task (see worker/backlog.py).
                    self.backlog.note_outcome(task.task_type, outcome)
            self._dispatch()
        if task is None:
            return
        if outcome is None:
            self._report_failure(
                child,
                task,
                error_type="WorkerError",
                error="the handler process sent an outcome the worker could not read",
                attempt_outcome=AttemptOutcome.FAILED,
            )
            return
        self.on_finished(Finished(task, outcome, None))

    def _child_died(self, child: _Child) -> None:
        """A child exited on its own: a handler crashed it (call with the lock held)."""
        task = child.task
        child.process.join(5)
        code = child.process.exitcode
        self._replace(child, f"exited with code {code}")
        self._dispatch()
        if task is not None:
            signal_hint = f" (killed by signal {-code})" if code is not None and code < 0 else ""
            self._report_failure(
                child,
                task,
                error_type="WorkerCrashed",
                error=f"the process running the handler died with exit code {code}{signal_hint}",
                attempt_outcome=AttemptOutcome.WORKER_LOST,
            )

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self.lock:
            for child in list(self.children):
                if not child.ready and now - child.spawned > START_TIMEOUT:
                    self._replace(child, f"did not start within {START_TIMEOUT:g} s")
                elif (
                    child.task is not None and child.deadline is not None and now >= child.deadline
                ):
                    task = child.task
                    self._kill(child)
                    child.task = None
                    self._replace(child, f"was stopped: its handler ran past {task.timeout:g} s")
                    self._report_failure(
                        child,
                        task,
                        error_type="TimeoutError",
                        error=f"timed out after {task.timeout:g} s",
                        attempt_outcome=AttemptOutcome.TIMED_OUT,
                    )
            self._dispatch()

    def _report_failure(
        self,
        child: _Child,
        task: ClaimedTask,
        *,
        error_type: str,
        error: str,
        attempt_outcome: str,
    ) -> None:
        outcome = failed_attempt(
            task,
            self.rng,
            duration=time.monotonic() - child.started,
            error_type=error_type,
            error=error,
            attempt_outcome=attempt_outcome,
        )
        with self.lock:
            self.backlog.note_outcome(task.task_type, outcome)
        self.on_finished(Finished(task, outcome, None))


def _kill_stray_children() -> None:
    """Kill and reap any handler process still alive (one a failed spawn or replace left)."""
    for process in multiprocessing.active_children():
        if process.name.startswith(CHILD_NAME) and process.is_alive():
            process.kill()
            process.join(5)
