"""Side duties of a worker (heartbeat, rescue, ...) on one thread and one connection.

Each duty runs at its own interval. A duty that fails is logged and tried again at its next
turn; the database being down never stops the thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

logger = logging.getLogger("taskqueue.worker.duties.runner")


@dataclass
class Duty:
    name: str
    interval: float
    run: Callable[[], object]
    next_at: float = 0.0


class DutyThread(threading.Thread):
    """Run each duty every ``interval`` seconds until stopped."""

    def __init__(self, using: str, duties: list[Duty], rng: random.Random) -> None:
        super().__init__(name="taskqueue-duties", daemon=True)
        self.using = using
        self.duties = duties
        self.stopped = threading.Event()
        now = time.monotonic()
        for duty in duties:
            # Spread the first turn so workers started together do not act in lockstep.
            duty.next_at = now + rng.uniform(0, duty.interval)

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                due = min(self.duties, key=lambda duty: duty.next_at)
                if self.stopped.wait(max(due.next_at - time.monotonic(), 0)):
                    break
                self._run(due)
                due.next_at = time.monotonic() + due.interval
        finally:
            connections.close_all()

    def _run(self, duty: Duty) -> None:
        try:
            duty.run()
        except (OperationalError, InterfaceError) as exc:
            # The database is away: one line, not a traceback per duty per turn.
            logger.warning(
                "worker duty %r: database unavailable (%s); trying again in %g s",
                duty.name,
                str(exc).strip(),
                duty.interval,
            )
            connections[self.using].close()
        except Exception:
            logger.warning(
                "worker duty %r failed; trying again in %g s",
                duty.name,
                duty.interval,
                exc_info=True,
            )
            connections[self.using].close()

    def stop(self) -> None:
        self.stopped.set()
