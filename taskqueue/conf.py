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
    # Hosts a schedule's heartbeat URL entered in the admin may ping ("hc-ping.com",
    # "*.example.com", IP addresses only when listed). Hosts of heartbeat URLs declared in
    # code or in SCHEDULES are allowed without being listed.
    "HEARTBEAT_HOSTS": [],
    # Let outbound requests (heartbeat pings) reach loopback and private addresses; link-local
    # and cloud metadata addresses stay refused (taskqueue.core.outbound).
    "OUTBOUND_ALLOW_PRIVATE": False,
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
    # Health thresholds: over one it is degraded, over twice it unhealthy (dead letters:
    # degraded only). QUEUES overrides MAX_PENDING / MAX_OLDEST_PENDING per queue
    # ({"emails": {"MAX_PENDING": 50}}). PUBLIC lets anyone read the verdict (no details).
    "HEALTH": {
        "MAX_PENDING": 1000,
        "MAX_OLDEST_PENDING": 1800,
        "MAX_DEAD_UNREVIEWED": 10,
        "QUEUES": {},
        "PUBLIC": False,
    },
    # Bearer tokens accepted by the stats, health and metrics views besides staff sessions.
    "MONITORING_TOKENS": [],
    # Outcome metrics: how often a worker writes what it counted (seconds), and how many
    # minutes of per-minute rows retention keeps (totals are kept forever).
    "METRICS": {
        "FLUSH_INTERVAL": 5,
        "MINUTES_KEPT": 1440,
    },
    # Lifecycle events: LOG writes one "taskqueue.lifecycle" record per event; STREAM is the
    # lowest severity kept for the live stream (None: none); KEEP is how long (seconds).
    "EVENTS": {
        "LOG": True,
        "STREAM": "warning",
        "KEEP": 86400,
    },
    # Alerts (taskqueue.monitoring.alerts): mail ADMINS when a task of a critical type is
    # dead-lettered; post WEBHOOK_EVENTS to a Slack-compatible webhook; each kind of alert at
    # most once per THROTTLE seconds across all processes, then a summary.
    "ALERTS": {
        "EMAIL": True,
        "WEBHOOK_URL": None,
        "WEBHOOK_EVENTS": ["dead_lettered", "circuit_opened", "schedule_late"],
        "WEBHOOK_CRITICAL_ONLY": False,
        "WEBHOOK_TIMEOUT": 5,
        "THROTTLE": 300,
    },
}

# Settings whose value is a dict of sub-keys: a project overriding one sub-key keeps the
# defaults of the others.
MERGED_DICTS = frozenset({"RETENTION", "HEALTH", "METRICS", "EVENTS", "ALERTS"})


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
