"""LISTEN for new-task notifications (PostgreSQL) and wake the claim loop at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import connections

from taskqueue.store import notifications

logger = logging.getLogger("taskqueue.worker.listener")

MAX_BACKOFF = 5.0


class ListenerThread(threading.Thread):
    """Holds one connection in ``LISTEN``; calls ``wake`` for notifications about our queues."""

    def __init__(self, using: str, queues: list[str], wake: Callable[[], None]) -> None:
        super().__init__(name="taskqueue-listener", daemon=True)
        self.using = using
        self.queues = frozenset(queues)
        self.wake = wake
        self.stopped = threading.Event()
        self.listening = threading.Event()

    def run(self) -> None:
        backoff = 0.1
        try:
            while not self.stopped.is_set():
                try:
                    self._listen()
                except Exception as exc:
                    if self.listening.is_set():
                        backoff = 0.1  # it was working: this is a fresh outage, retry soon
                    self.listening.clear()
                    logger.warning("lost the LISTEN connection (%s); polling until it is back", exc)
                    connections[self.using].close()
                    # Catch up on whatever was enqueued while we were deaf.
                    self.wake()
                    self.stopped.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            connections[self.using].close()

    def _listen(self) -> None:
        notifications.listen(self.using)
        self.listening.set()
        self.wake()
        while not self.stopped.is_set():
            for queue in notifications.notified_queues(self.using, timeout=0.5):
                if queue in self.queues:
                    self.wake()

    def stop(self) -> None:
        self.stopped.set()
