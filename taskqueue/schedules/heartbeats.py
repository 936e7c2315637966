"""Heartbeat pings: a GET to a schedule's URL after each success, for an outside monitor.

Monitors in the style of healthchecks.io or Cronitor expect a request after every
successful run and alert when none arrives, which also catches the whole system being down.
Pings go out from one background thread with a short timeout: a slow or dead monitor never
holds up a worker, and a failed ping is logged, never retried or raised.

Each ping goes through ``taskqueue.core.outbound`` again when it is sent, whatever checked the
URL when it was stored (rows may predate the rule or come from elsewhere): its host must be
in ``TASKQUEUE['HEARTBEAT_HOSTS']`` or be the host of a heartbeat URL declared in code or in
``TASKQUEUE['SCHEDULES']`` (developers wrote those), its addresses must pass the private
address rule, and a redirect is a failed ping. Logs name the host, never the URL: a
monitor's ping URL is a secret.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured

from taskqueue.conf import settings as tq_settings
from taskqueue.core import outbound
from taskqueue.schedules.declarations import declared_schedules
from taskqueue.schedules.definitions import HEARTBEAT_HOSTS_SETTING
from taskqueue.version import __version__

logger = logging.getLogger("taskqueue.schedules.heartbeats")

PING_TIMEOUT = 5.0  # seconds per request
# Pings waiting beyond this many are dropped (a monitor that stopped answering).
MAX_WAITING = 1000
MAX_BODY = 1024  # bytes of a monitor's answer read before the connection is closed
USER_AGENT = f"taskqueue/{__version__} (schedule heartbeat)"


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
                if len(self._waiting) >= MAX_WAITING:
                    logger.warning(
                        "heartbeat ping queue full; dropped the ping to %s",
                        outbound.loggable_origin(url),
                    )
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


def allowed_hosts() -> outbound.AllowList:
    """HEARTBEAT_HOSTS plus the hosts of the heartbeat URLs declared in code and settings."""
    configured = outbound.AllowList.parse(tq_settings.HEARTBEAT_HOSTS, HEARTBEAT_HOSTS_SETTING)
    declared, _ = declared_schedules(tq_settings.SCHEDULES)
    hosts = set(configured.names)
    for declaration in declared:
        if declaration.heartbeat_url:
            try:
                hosts.add(outbound.parse_url(declaration.heartbeat_url).host)
            except outbound.OutboundRefused:
                continue  # refused again, with its reason, if it is ever pinged
    return outbound.AllowList(frozenset(hosts), configured.suffixes, False, HEARTBEAT_HOSTS_SETTING)


def _send(url: str) -> None:
    origin = outbound.loggable_origin(url)
    try:
        response = outbound.request(
            url,
            allowed_hosts(),
            headers={"User-Agent": USER_AGENT},
            timeout=PING_TIMEOUT,
            max_body=MAX_BODY,
        )
    except (outbound.OutboundRefused, ImproperlyConfigured) as exc:
        logger.warning("heartbeat ping to %s refused: %s", origin, exc, extra={"host": origin})
        return
    except Exception as exc:  # a monitor's failure must never reach the worker
        logger.warning(
            "heartbeat ping to %s failed: %s: %s",
            origin,
            type(exc).__name__,
            exc,
            extra={"host": origin},
        )
        return
    if not response.ok:
        unfollowed = " (redirects are not followed)" if response.is_redirect else ""
        logger.warning(
            "heartbeat ping to %s failed: it answered %d %s%s",
            origin,
            response.status,
            response.reason,
            unfollowed,
            extra={"host": origin},
        )


pinger = Pinger()
ping = pinger.ping
# A worker that exits right after a success (--burst, --max-tasks) still sends its pings.
atexit.register(pinger.flush)
