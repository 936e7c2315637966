"""System checks for ``settings.TASKQUEUE`` with stable ids (``manage.py check``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from croniter import croniter
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from taskqueue.conf import DEFAULTS, MERGED_DICTS

QUEUE_HINT = "Queue names are 1 to 100 letters, digits, '_', '.' or '-'."


def _error(msg: str, id_: str, hint: str | None = None) -> Error:
    return Error(msg, hint=hint, obj="settings.TASKQUEUE", id=id_)


def _positive(name: str, value: Any, *, integer: bool = False) -> list[CheckMessage]:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        return [_error(f"TASKQUEUE[{name!r}] must be {kind}, got {value!r}.", "taskqueue.E002")]
    return []


@register(Tags.compatibility)
def check_settings(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from taskqueue.registry import QUEUE_PATTERN

    raw = getattr(django_settings, "TASKQUEUE", {})
    if not isinstance(raw, dict):
        return [_error(f"TASKQUEUE must be a dict, got {type(raw).__name__}.", "taskqueue.E001")]
    messages: list[CheckMessage] = []
    for name in sorted(set(raw) - set(DEFAULTS)):
        messages.append(
            _error(
                f"Unknown TASKQUEUE setting {name!r}.",
                "taskqueue.E001",
                hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
            )
        )
    for name in MERGED_DICTS & set(raw):
        value = raw[name]
        if not isinstance(value, dict):
            messages.append(_error(f"TASKQUEUE[{name!r}] must be a dict.", "taskqueue.E002"))
            continue
        for key in sorted(set(value) - set(DEFAULTS[name])):
            messages.append(
                _error(
                    f"Unknown key {key!r} in TASKQUEUE[{name!r}].",
                    "taskqueue.E001",
                    hint=f"Known keys: {', '.join(sorted(DEFAULTS[name]))}.",
                )
            )
        for key, number in value.items():
            if key in DEFAULTS[name]:
                messages += _positive(f"{name}'][{key!r}", number)

    alias = raw.get("DATABASE", DEFAULTS["DATABASE"])
    if alias not in django_settings.DATABASES:
        messages.append(
            _error(
                f"TASKQUEUE['DATABASE'] names {alias!r}, which is not in DATABASES.",
                "taskqueue.E003",
            )
        )
    else:
        engine = django_settings.DATABASES[alias].get("ENGINE", "")
        if not engine.endswith(("postgresql", "sqlite3")):
            messages.append(
                _error(
                    f"taskqueue supports PostgreSQL and SQLite; {alias!r} uses {engine}.",
                    "taskqueue.E003",
                )
            )
        elif engine.endswith("sqlite3"):
            options = django_settings.DATABASES[alias].get("OPTIONS", {})
            if "journal_mode=wal" not in str(options.get("init_command", "")).lower():
                messages.append(
                    Warning(
                        "The task queue is on SQLite without WAL journal mode: workers and "
                        "the web server will block each other.",
                        hint="Set DATABASES[...]['OPTIONS'] = {'init_command': "
                        "'PRAGMA journal_mode=WAL;', 'transaction_mode': 'IMMEDIATE', "
                        "'timeout': 20}. SQLite suits development; use PostgreSQL in "
                        "production.",
                        obj="settings.DATABASES",
                        id="taskqueue.W001",
                    )
                )

    queues = raw.get("QUEUES", DEFAULTS["QUEUES"])
    if (
        not isinstance(queues, list | tuple)
        or not queues
        or not all(isinstance(q, str) and QUEUE_PATTERN.match(q) for q in queues)
    ):
        messages.append(
            _error(
                f"TASKQUEUE['QUEUES'] must be a non-empty list of queue names, got {queues!r}.",
                "taskqueue.E002",
                hint=QUEUE_HINT,
            )
        )
    pool = raw.get("POOL", DEFAULTS["POOL"])
    if pool not in ("processes", "threads"):
        messages.append(
            _error(
                f"TASKQUEUE['POOL'] must be 'processes' or 'threads', got {pool!r}.",
                "taskqueue.E002",
            )
        )
    for name in ("CONCURRENCY", "MAX_ATTEMPTS", "MAX_PAYLOAD_BYTES"):
        if name in raw:
            messages += _positive(name, raw[name], integer=True)
    for name in (
        "POLL_INTERVAL",
        "HEARTBEAT_INTERVAL",
        "STALE_AFTER",
        "RESCUE_INTERVAL",
        "DEFAULT_TIMEOUT",
        "CANCEL_GRACE",
        "SCHEDULE_GRACE",
    ):
        if name in raw:
            messages += _positive(name, raw[name])
    if raw.get("MAX_MEMORY") is not None:
        messages += _positive("MAX_MEMORY", raw["MAX_MEMORY"])
    if "SHUTDOWN_TIMEOUT" in raw:
        value = raw["SHUTDOWN_TIMEOUT"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            messages.append(
                _error(
                    "TASKQUEUE['SHUTDOWN_TIMEOUT'] must be a number of seconds >= 0, "
                    f"got {value!r}.",
                    "taskqueue.E002",
                )
            )
    heartbeat = raw.get("HEARTBEAT_INTERVAL", DEFAULTS["HEARTBEAT_INTERVAL"])
    stale = raw.get("STALE_AFTER", DEFAULTS["STALE_AFTER"])
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (heartbeat, stale)):
        if stale <= heartbeat * 2:
            messages.append(
                Warning(
                    f"TASKQUEUE['STALE_AFTER'] ({stale}) should be well over twice "
                    f"HEARTBEAT_INTERVAL ({heartbeat}), or live workers will be taken for dead.",
                    obj="settings.TASKQUEUE",
                    id="taskqueue.W002",
                )
            )
    messages += _check_schedules(raw.get("SCHEDULES", {}))
    return messages


def _check_schedules(schedules: Any) -> list[CheckMessage]:
    if not isinstance(schedules, dict):
        return [
            _error("TASKQUEUE['SCHEDULES'] must be a dict of name to schedule.", "taskqueue.E004")
        ]
    messages: list[CheckMessage] = []
    for name, entry in schedules.items():
        where = f"TASKQUEUE['SCHEDULES'][{name!r}]"
        if not isinstance(entry, dict) or "task" not in entry or "cron" not in entry:
            messages.append(
                _error(f"{where} must be a dict with 'task' and 'cron'.", "taskqueue.E004")
            )
            continue
        cron = entry["cron"]
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            messages.append(
                _error(
                    f"{where} has an invalid cron expression {cron!r}.",
                    "taskqueue.E004",
                    hint="Use five fields (minute hour day month weekday), "
                    "optionally a sixth for seconds.",
                )
            )
    return messages
