"""The listening end of the store's new-task notifications (PostgreSQL ``LISTEN``).

The store sends ``NOTIFY`` on ``NOTIFY_CHANNEL`` with a queue's name when tasks become ready
there (``taskqueue.store.sql.notify``, and the trigger of migration 0002); workers listen
through this module (``taskqueue.worker.listener``).
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import connections

from taskqueue.store.sql import NOTIFY_CHANNEL


def listen(using: str) -> None:
    """Subscribe ``using``'s connection (opened if need be) to new-task notifications."""
    connection = connections[using]
    connection.ensure_connection()
    connection.connection.execute(f"LISTEN {NOTIFY_CHANNEL}")


def notified_queues(using: str, timeout: float) -> Iterator[str]:
    """The queues named by notifications that arrive within ``timeout`` seconds."""
    for notification in connections[using].connection.notifies(timeout=timeout):
        yield notification.payload
