"""Claims for task types under flow control (rate limit, concurrency limit, circuit probe).

The main claim skips these types; each is claimed here, under its ``TaskType`` row's lock,
at most as many tasks as its limits allow right now.
"""

from __future__ import annotations

import math
import threading
import time

from taskqueue.core.registry import registry
from taskqueue.store import ClaimedTask, flow

# How long the list of gated types is trusted. Every gated claim re-reads the type's
# controls under its lock, so a stale list only delays a newly gated type's first claim
# (its tasks wait meanwhile: the main claim already skips it) or costs one useless claim.
TYPES_TTL = 1.0


class Gates:
    """The worker's view of gated task types and when each may next be claimed."""

    def __init__(self, using: str, poll_interval: float) -> None:
        self.using = using
        self.poll_interval = poll_interval
        self._types: list[str] = []
        self._types_read_at = -math.inf
        # Type -> monotonic time before which claiming it is pointless.
        self._not_before: dict[str, float] = {}
        # The types whose wait ends with time alone (next token, end of a cool-down), as
        # opposed to those waiting for new work or a running task to finish.
        self._timed: set[str] = set()
        self._turn = 0
        # woken() runs on the listener and pool threads; the rest on the loop's thread.
        self._lock = threading.Lock()

    def claim(self, worker_id: str, queues: list[str], limit: int) -> list[ClaimedTask]:
        """Claim up to ``limit`` tasks of gated types whose limits allow it now."""
        now = time.monotonic()
        types = self._gated_types(now)
        if not types or limit <= 0:
            return []
        # Start one further along each time, so no type starves the others of free slots.
        self._turn = (self._turn + 1) % len(types)
        claimed: list[ClaimedTask] = []
        for task_type in types[self._turn :] + types[: self._turn]:
            if len(claimed) >= limit:
                break
            if self._not_before.get(task_type, 0.0) > now:
                continue
            result = flow.claim_gated(task_type, worker_id, queues, limit - len(claimed))
            claimed += result.tasks
            self._note(task_type, result, time.monotonic())
        return claimed

    def _note(self, task_type: str, result: flow.GatedClaim, now: float) -> None:
        with self._lock:
            if result.retry_after is not None:
                self._not_before[task_type] = now + result.retry_after
                self._timed.add(task_type)
                return
            self._timed.discard(task_type)
            if result.tasks and not result.drained:
                self._not_before.pop(task_type, None)  # more may be due: try again next turn
            else:
                # Nothing due, or held back until a running task finishes: new work (NOTIFY),
                # this worker's own finished tasks (both wake the loop) or the poll brings
                # it back.
                self._not_before[task_type] = now + self.poll_interval

    def seconds_until_next(self) -> float:
        """How long until some gated type may be claimed again (inf: nothing to wait for)."""
        now = time.monotonic()
        with self._lock:
            # Only waits still ahead: one already over is up to the next claim, and waking
            # for it while every slot is busy would only spin the loop.
            ahead = [
                self._not_before[name] - now
                for name in self._timed
                if self._not_before.get(name, 0.0) > now
            ]
        return min(ahead, default=math.inf)

    def limited_work_is_due(self, queues: list[str]) -> bool:
        """Rate- or concurrency-limited tasks are due: only their limits hold them back."""
        return flow.limited_work_is_due(self.using, registry.names(), queues)

    def woken(self) -> None:
        """New work was announced: types that had nothing due are worth trying again."""
        with self._lock:
            for task_type in list(self._not_before):
                if task_type not in self._timed:
                    del self._not_before[task_type]

    def _gated_types(self, now: float) -> list[str]:
        if now - self._types_read_at >= TYPES_TTL:
            self._types = flow.gated_task_types(self.using, registry.names())
            self._types_read_at = now
            known = set(self._types)
            with self._lock:
                self._timed &= known
                for task_type in list(self._not_before):
                    if task_type not in known:
                        del self._not_before[task_type]
        return self._types
