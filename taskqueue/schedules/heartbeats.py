"""Heartbeat pings: a GET to a schedule's URL after each success, for an outside monitor.

Monitors in the style of healthchecks.io or Cronitor expect a request after every
successful run and alert when none arrives, which also catches the whole system being down.
Pings go out from one background thread with a short timeout: a slow or dead monitor never
holds up a worker, and a failed ping is logged, never retried or raised.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

import taskqueue

logger = logging.getLogger("taskqueue.schedules.heartbeats")

PING_TIMEOUT = 5.0  # seconds per request
# Pings waiting beyond this many are dropped (a monitor that stopped answering).
MAX_WAITING = 1000
USER_AGENT = f"taskqueue/{taskqueue.__version__} (schedule heartbeat)"


class Pinger:
    """Sends queued pings from a daemon thread; ``flush`` waits for them at exit."""

    def __init__(self) -> None:
        self._waiting: deque[str] = deque()
        self._condition = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = 0

    def ping(self, urls: Iterable[str]) -> None:
        with self._condition:
            for url in dict.fromkeys(urls):  # once per URL per batch of successes
                if not _is_http(url):
                    logger.warning("not pinging %r: heartbeat URLs must be http or https", url)
                    continue
                if len(self._waiting) >= MAX_WAITING:
                    logger.warning("heartbeat ping queue full; dropped the ping to %s", url)
                    continue
                self._waiting.append(url)
            # A forked child inherits the parent's object but not its thread.
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="taskqueue-heartbeats", daemon=True
                )
                self._thread.start()
            self._condition.notify_all()

    def flush(self, timeout: float = PING_TIMEOUT) -> bool:
        """Wait up to ``timeout`` seconds for queued pings to be sent; True if all were."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._waiting or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._pid != os.getpid():
                    return False
                self._condition.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._waiting:
                    self._condition.wait()
                url = self._waiting.popleft()
                self._in_flight += 1
            try:
                _send(url)
            finally:
                with self._condition:
                    self._in_flight -= 1
                    self._condition.notify_all()


def _is_http(url: str) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme in ("http", "https")


def _send(url: str) -> None:
    # Only http(s) URLs reach here (checked in ping), never file: or custom schemes.
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": USER_AGENT})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=PING_TIMEOUT) as response:  # noqa: S310
            response.read(1024)
    except Exception as exc:  # a monitor's failure must never reach the worker
        logger.warning("heartbeat ping to %s failed: %s", url, exc)


pinger = Pinger()
ping = pinger.ping
# A worker that exits right after a success (--burst, --max-tasks) still sends its pings.
atexit.register(pinger.flush)
