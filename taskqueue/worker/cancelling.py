"""Cancellation of running tasks: notice ``cancel_requested`` on tasks in hand, and stop the
ones that have not finished within the grace period.

``taskqueue.cancel`` on a claimed task only sets its ``cancel_requested`` flag (a completion
must never be overwritten). The claim loop calls ``CancelWatch.check`` every turn; at most
every ``CHECK_INTERVAL`` seconds it asks the database which tasks in hand carry the flag.
Tasks still queued in the pool are withdrawn and recorded cancelled at once; handlers
already running get ``grace`` seconds to notice ``ctx.cancel_requested`` and stop, then the
pool stops them (a handler process is killed, an async handler in a thread is cancelled; a
sync handler in a thread cannot be stopped and is left to finish).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from taskqueue import store
from taskqueue.core.outcome import Outcome
from taskqueue.store import ClaimedTask
from taskqueue.worker.outcomes import Finished
from taskqueue.worker.pools.base import HandlerPool

logger = logging.getLogger("taskqueue.worker.cancelling")

# Seconds between the queries for new cancel requests while tasks are in hand.
CHECK_INTERVAL = 0.5


@dataclass
class _Request:
    seen_at: float  # monotonic time this worker first saw the request
    stopped: bool = False
    warned: bool = False
    task: ClaimedTask | None = field(default=None, repr=False)


class CancelWatch:
    """Polls the worker's tasks in hand for cancel requests (main thread, queue connection)."""

    def __init__(
        self,
        grace: float,
        on_finished: Callable[[Finished], None] | None = None,
        worker_id: str = "",
    ) -> None:
        self.grace = grace
        self.on_finished = on_finished
        self.worker_id = worker_id
        self.requests: dict[uuid.UUID, _Request] = {}
        self.checked_at = float("-inf")

    def check(self, in_hand: dict[uuid.UUID, ClaimedTask], pool: HandlerPool) -> None:
        """Look for new cancel requests (at most every so often); stop tasks past the grace."""
        if not in_hand:
            self.requests.clear()
            return
        for task_id in [task_id for task_id in self.requests if task_id not in in_hand]:
            del self.requests[task_id]  # its outcome is written: nothing left to watch
        now = time.monotonic()
        if now - self.checked_at >= CHECK_INTERVAL:
            self.checked_at = now
            unseen = [task_id for task_id in in_hand if task_id not in self.requests]
            if unseen:
                self._take_new_requests(store.cancel_requested_among(unseen), in_hand, pool, now)
        self._stop_overdue(pool, now)

    def _take_new_requests(
        self,
        requested: set[uuid.UUID],
        in_hand: dict[uuid.UUID, ClaimedTask],
        pool: HandlerPool,
        now: float,
    ) -> None:
        if not requested:
            return
        for task_id in requested:
            self.requests[task_id] = _Request(seen_at=now, task=in_hand[task_id])
        for task in pool.withdraw(requested):
            # Claimed ahead, never started: nothing to wait for.
            self.requests[task.id].stopped = True
            reason = (
                f"cancelled before its handler started (claimed ahead by worker {self.worker_id})"
            )
            if self.on_finished is not None:
                self.on_finished(Finished(task, Outcome.cancelled(0.0, reason), None))
            logger.info(
                "task %s (%s) withdrawn: cancel requested before it started",
                task.id,
                task.task_type,
                extra={"task_id": str(task.id), "task_type": task.task_type},
            )

    def _stop_overdue(self, pool: HandlerPool, now: float) -> None:
        for task_id, request in self.requests.items():
            if request.stopped or now - request.seen_at < self.grace:
                continue
            reason = (
                "cancelled while running: the handler did not stop within the "
                f"{self.grace:g} s grace period (CANCEL_GRACE) and was stopped"
            )
            result = pool.stop(task_id, reason)
            if result == "stopped":
                request.stopped = True
            elif result == "unstoppable" and not request.warned:
                # Checked again every turn: an async handler may register in a moment.
                request.warned = True
                task = request.task
                logger.warning(
                    "task %s (%s) was asked to cancel %g s ago, but its sync handler runs in a "
                    "thread (--pool threads) and cannot be stopped; letting it finish",
                    task_id,
                    task.task_type if task else "",
                    self.grace,
                    extra={"task_id": str(task_id), "task_type": task.task_type if task else ""},
                )
