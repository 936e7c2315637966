"""App settings: one ``DEFAULTS`` table, read from ``settings.TASKQUEUE`` on every access.

Values are looked up when used, never snapshotted at import, so ``override_settings``
works in tests. Unknown names raise ``AttributeError``; ``manage.py check`` validates values.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    "DATABASE": "default",
    "QUEUES": ["default"],
    "CONCURRENCY": 4,
    "POOL": "processes",
    "POLL_INTERVAL": 1.0,
    "HEARTBEAT_INTERVAL": 10,
    "STALE_AFTER": 60,
    "RESCUE_INTERVAL": 15,
    "SHUTDOWN_TIMEOUT": 25,
    "MAX_ATTEMPTS": 3,
    "DEFAULT_TIMEOUT": 1800,
    "MAX_PAYLOAD_BYTES": 1048576,
    "MAX_MEMORY": None,  # MiB per process; over it a handler process or the worker recycles
    "CANCEL_GRACE": 10,  # seconds a running task has to stop after a cancel before it is killed
    "SCHEDULE_GRACE": 600,  # seconds after its slot by which a scheduled run must succeed
    "SCHEDULES": {},
    # Ages in seconds (None keeps forever), pruned by the built-in "taskqueue-retention"
    # schedule in batches of batch_size rows.
    "RETENTION": {
        "completed": 7 * 86400,
        "cancelled": 7 * 86400,
        "reviewed_dead": 30 * 86400,
        "workers": 7 * 86400,
        "cron": "*/15 * * * *",
        "batch_size": 1000,
    },
    "HEALTH": {
        "MAX_PENDING": 1000,
        "MAX_OLDEST_PENDING": 1800,
        "MAX_DEAD_UNREVIEWED": 10,
    },
}

# Settings whose value is a dict of sub-keys: a project overriding one sub-key keeps the
# defaults of the others.
MERGED_DICTS = frozenset({"RETENTION", "HEALTH"})


def user_settings() -> dict[str, Any]:
    """Return the project's ``TASKQUEUE`` dict (empty when unset)."""
    value = getattr(django_settings, "TASKQUEUE", None)
    return value if isinstance(value, dict) else {}


class TaskqueueSettings:
    """Attribute access to taskqueue settings with defaults applied."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown taskqueue setting: {name!r}")
        configured = user_settings()
        if name not in configured:
            # A copy: a caller mutating the value must not change the defaults.
            return copy.deepcopy(DEFAULTS[name])
        value = configured[name]
        if name in MERGED_DICTS and isinstance(value, dict):
            return {**DEFAULTS[name], **value}
        return value


settings = TaskqueueSettings()
