"""Circuit breakers seen from one worker: tasks claimed ahead of an opened circuit go back.

The claim skips a type whose circuit is open, but a worker may already hold claimed tasks
of it that no slot has started (prefetched, or held back by its pool after a failure, see
``taskqueue.worker.pools.backlog``). Running them would spend attempts on a type known to be
failing, so the claim loop asks ``CircuitWatch.check`` each turn which of them to send back:

- right after failures of a held-back type are recorded (the circuit may just have opened);
- every ``CHECK_INTERVAL`` seconds while it holds tasks of types with a circuit breaker
  (another worker's failures may have opened it).

Sent-back tasks return to the queue with their attempt given back (``store.release_tasks``)
and are claimed again once the circuit lets them through.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection

from taskqueue.models import CircuitState, TaskType
from taskqueue.store import ClaimedTask
from taskqueue.worker.pools.backlog import has_breaker
from taskqueue.worker.pools.base import HandlerPool

logger = logging.getLogger("taskqueue.worker.circuits")

# Seconds between looks at the circuits of the breaker types in hand.
CHECK_INTERVAL = 0.5


class CircuitWatch:
    """Decides, on the claim loop's thread, which unstarted tasks an open circuit sends back."""

    def __init__(self, using: str, worker_id: str) -> None:
        self.using = using
        self.worker_id = worker_id
        self.checked_at = float("-inf")

    def check(
        self,
        in_hand: dict[uuid.UUID, ClaimedTask],
        pool: HandlerPool,
        unrecorded_failures: Collection[str],
    ) -> list[ClaimedTask]:
        """Withdraw from ``pool`` the unstarted tasks of types whose circuit is open; let
        held-back types whose failures are recorded start again. ``unrecorded_failures``:
        types with a failure the loop has not written yet (they stay held)."""
        held = pool.held_types()
        watched = set(held)
        now = time.monotonic()
        if now - self.checked_at >= CHECK_INTERVAL:
            breaker_types = {task.task_type for task in in_hand.values()}
            watched |= {name for name in breaker_types if has_breaker(name)}
            self.checked_at = now
        if not watched:
            return []
        opened = set(
            TaskType.objects.using(self.using)
            .filter(name__in=sorted(watched), circuit_state=CircuitState.OPEN)
            .values_list("name", flat=True)
        )
        withdrawn: list[ClaimedTask] = []
        if opened:
            ids = [task.id for task in in_hand.values() if task.task_type in opened]
            withdrawn = pool.withdraw(ids)
            for task_type in sorted({task.task_type for task in withdrawn}):
                count = sum(task.task_type == task_type for task in withdrawn)
                logger.info(
                    "circuit of %s is open: %d task(s) claimed ahead go back to the queue "
                    "without spending an attempt",
                    task_type,
                    count,
                    extra={"task_type": task_type},
                )
        recorded = held - set(unrecorded_failures)
        if recorded:
            pool.release_held(recorded)
        return withdrawn
