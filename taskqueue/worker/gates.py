"""Claims for task types under flow control (rate limit, concurrency limit, circuit probe).

The main claim skips these types; each is claimed here, under its ``TaskType`` row's lock,
at most as many tasks as its limits allow right now.
"""

from __future__ import annotations

import math

from taskqueue.sql import ClaimedTask


class Gates:
    """The worker's view of gated task types and when each may next be claimed."""

    def __init__(self, using: str, poll_interval: float) -> None:
        self.using = using
        self.poll_interval = poll_interval

    def claim(self, worker_id: str, queues: list[str], limit: int) -> list[ClaimedTask]:
        """Claim up to ``limit`` tasks of gated types whose limits allow it now."""
        return []  # TODO(flow control): implement

    def seconds_until_next(self) -> float:
        """How long until some gated type may be claimed again (inf: nothing to wait for)."""
        return math.inf

    def woken(self) -> None:
        """New work was announced: types that had nothing due are worth trying again."""
