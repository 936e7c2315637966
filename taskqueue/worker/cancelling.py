"""Cancellation of running tasks: notice ``cancel_requested`` on tasks in hand, and stop the
ones that have not finished within the grace period.
"""

from __future__ import annotations

import uuid

from taskqueue.sql import ClaimedTask
from taskqueue.worker.pools import HandlerPool


class CancelWatch:
    """Polls the worker's tasks in hand for cancel requests (main thread, queue connection)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace

    def check(self, in_hand: dict[uuid.UUID, ClaimedTask], pool: HandlerPool) -> None:
        """Look for new cancel requests (at most every so often); stop tasks past the grace."""
        # TODO(cancellation): implement
