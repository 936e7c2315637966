"""Checks of the settings that are dicts merged with their defaults.

RETENTION, HEALTH, METRICS, EVENTS and ALERTS: a project sets only the keys it changes, so
each key given is checked by its own rule, and a key taskqueue does not know is E001.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.core.checks import CheckMessage

from taskqueue.checks.messages import (
    BAD_QUEUE_NAME,
    BAD_URL,
    NOT_A_CHOICE,
    SCHEDULE,
    WRONG_TYPE,
    Rule,
    clipped,
    error,
    shown,
    type_name,
)
from taskqueue.checks.rules import (
    FLAG,
    POSITIVE_INTEGER,
    POSITIVE_NUMBER,
    SECONDS,
    Choice,
    Number,
    check_dict,
    sorted_keys,
)
from taskqueue.conf import DEFAULTS
from taskqueue.core.limits import MAX_DELAY_SECONDS, MAX_DELAY_TEXT
from taskqueue.core.registry import QUEUE_PATTERN
from taskqueue.monitoring.alerts import EVENT_SIGNALS
from taskqueue.schedules.cron import FIELDS_HINT, CronError, validate_cron

QUEUE_HINT = "Queue names are 1 to 100 letters, digits, '_', '.' or '-'."
EVENT_SEVERITIES = ("info", "warning", "error")

RETENTION_AGE = Number(
    "a positive number of seconds or None (keep forever)",
    maximum=MAX_DELAY_SECONDS,
    maximum_text=MAX_DELAY_TEXT,
    none_allowed=True,
)
MINUTES_KEPT = Number(
    "a whole number of minutes, at least 60 (the stats view reports on the last hour)",
    integer=True,
    minimum=60,
    minimum_included=True,
    maximum=MAX_DELAY_SECONDS // 60,
    maximum_text=MAX_DELAY_TEXT,
)
STREAM_SEVERITY = Choice(
    EVENT_SEVERITIES,
    expectation="the lowest severity the live stream keeps "
    f"({', '.join(map(repr, EVENT_SEVERITIES))}) or None",
    none_allowed=True,
)
HEALTH_QUEUE_RULES: dict[str, Rule] = {
    "MAX_PENDING": POSITIVE_NUMBER,
    "MAX_OLDEST_PENDING": SECONDS,
}


def is_queue_name(value: Any) -> bool:
    """A string the registry and the worker accept as a queue name (no trailing newline)."""
    return isinstance(value, str) and QUEUE_PATTERN.fullmatch(value) is not None


def retention_cron(where: str, value: Any) -> list[CheckMessage]:
    """None (no built-in schedule: the project runs taskqueue_prune) or a valid cron."""
    if value is None:
        return []
    hint = f"Use None to run no built-in schedule, or {FIELDS_HINT}."
    if not isinstance(value, str):
        return [
            error(
                SCHEDULE,
                f"{where} is not a valid cron expression: it must be a string or None, "
                f"got {shown(value)}.",
                hint=hint,
            )
        ]
    try:
        validate_cron(value)
    except CronError as exc:
        return [
            error(SCHEDULE, f"{where} is not a valid cron expression: {clipped(str(exc))}.", hint)
        ]
    return []


def health_queues(where: str, value: Any) -> list[CheckMessage]:
    """Queue name to MAX_PENDING / MAX_OLDEST_PENDING overrides."""
    if not isinstance(value, dict):
        return [
            error(
                WRONG_TYPE,
                f"{where} must be a dict of queue name to thresholds, got {shown(value)}.",
                hint='For example {"emails": {"MAX_PENDING": 50}}.',
            )
        ]
    messages: list[CheckMessage] = []
    for queue in sorted_keys(value):
        if not is_queue_name(queue):
            messages.append(
                error(
                    BAD_QUEUE_NAME,
                    f"{where} has the key {shown(queue)}, which is not a queue name.",
                    hint=QUEUE_HINT,
                )
            )
            continue
        messages += check_dict(
            f"{where}[{queue!r}]",
            value[queue],
            HEALTH_QUEUE_RULES,
            HEALTH_QUEUE_RULES,
            expectation="a dict of thresholds",
        )
    return messages


def _url_shown(url: str) -> str:
    # Webhook URLs carry their secret in the path (Slack's do): show the host at most.
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    start = f"{scheme}://{host}" if separator else host
    return shown(start + "/...") if len(start) < len(url) else shown(start)


def webhook_url(where: str, value: Any) -> list[CheckMessage]:
    """None (no webhook) or an http(s) URL; the URL itself is not printed beyond its host."""
    if value is None:
        return []
    expectation = "an http:// or https:// URL or None"
    if not isinstance(value, str):
        return [error(WRONG_TYPE, f"{where} must be {expectation}, got {type_name(value)}.")]
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # such as an unclosed "[" of an IPv6 address
        valid = False
    if valid and not re.search(r"[\s\x00-\x1f]", value):
        return []
    return [
        error(
            BAD_URL,
            f"{where} must be {expectation}, got {_url_shown(value)} (the rest of a webhook URL "
            "is not shown: it may hold a secret).",
        )
    ]


def webhook_events(where: str, value: Any) -> list[CheckMessage]:
    """A list of the event names alerts know."""
    problem = (
        f"{where} must be a list of event names from {', '.join(map(repr, EVENT_SIGNALS))}, "
        f"got {shown(value)}"
    )
    if not isinstance(value, list | tuple):
        return [error(WRONG_TYPE, f"{problem}.")]
    for name in value:
        if not isinstance(name, str):
            return [error(WRONG_TYPE, f"{problem}: {shown(name)} is not a string.")]
        if name not in EVENT_SIGNALS:
            return [error(NOT_A_CHOICE, f"{problem}: {shown(name)} is not one.")]
    return []


SECTION_RULES: dict[str, dict[str, Rule]] = {
    "RETENTION": {
        "completed": RETENTION_AGE,
        "cancelled": RETENTION_AGE,
        "reviewed_dead": RETENTION_AGE,
        "workers": RETENTION_AGE,
        "cron": retention_cron,
        "batch_size": POSITIVE_INTEGER,
    },
    "HEALTH": {
        "MAX_PENDING": POSITIVE_NUMBER,
        "MAX_OLDEST_PENDING": SECONDS,
        "MAX_DEAD_UNREVIEWED": POSITIVE_NUMBER,
        "QUEUES": health_queues,
        "PUBLIC": FLAG,
    },
    "METRICS": {"FLUSH_INTERVAL": SECONDS, "MINUTES_KEPT": MINUTES_KEPT},
    "EVENTS": {"LOG": FLAG, "STREAM": STREAM_SEVERITY, "KEEP": SECONDS},
    "ALERTS": {
        "EMAIL": FLAG,
        "WEBHOOK_URL": webhook_url,
        "WEBHOOK_EVENTS": webhook_events,
        "WEBHOOK_CRITICAL_ONLY": FLAG,
        "WEBHOOK_TIMEOUT": SECONDS,
        "THROTTLE": SECONDS,
    },
}


def section_rule(name: str) -> Rule:
    """The rule for the merged dict setting ``name``: its keys those of its defaults."""

    def check_section(where: str, value: Any) -> list[CheckMessage]:
        return check_dict(where, value, SECTION_RULES[name], DEFAULTS[name])

    return check_section
