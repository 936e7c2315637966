"""System checks for ``settings.TASKQUEUE`` with stable ids (``manage.py check``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
        if name == "RETENTION":
            messages += _check_retention(value)
            continue
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


RETENTION_AGES = ("completed", "cancelled", "reviewed_dead", "workers")


def _check_retention(retention: dict[str, Any]) -> list[CheckMessage]:
    """Ages are seconds or None (keep forever); batch_size a positive integer; cron valid
    or None (no built-in schedule)."""
    messages: list[CheckMessage] = []
    for key in RETENTION_AGES:
        value = retention.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            messages.append(
                _error(
                    f"TASKQUEUE['RETENTION'][{key!r}] must be a positive number of seconds "
                    f"or None (keep forever), got {value!r}.",
                    "taskqueue.E002",
                )
            )
    size = retention.get("batch_size", DEFAULTS["RETENTION"]["batch_size"])
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        messages.append(
            _error(
                f"TASKQUEUE['RETENTION']['batch_size'] must be a positive integer, got {size!r}.",
                "taskqueue.E002",
            )
        )
    cron = retention.get("cron", DEFAULTS["RETENTION"]["cron"])
    if cron is not None:  # None: no built-in schedule, the project runs taskqueue_prune
        from taskqueue.schedules.cron import FIELDS_HINT, CronError, validate_cron

        try:
            validate_cron(cron)
        except CronError as exc:
            messages.append(
                _error(
                    f"TASKQUEUE['RETENTION']['cron'] is not a valid cron expression: {exc}.",
                    "taskqueue.E002",
                    hint=f"Use None to run no built-in schedule, or {FIELDS_HINT}.",
                )
            )
    return messages


def _check_schedules(schedules: Any) -> list[CheckMessage]:
    """Every settings schedule is valid and names a registered task; @periodic is bound."""
    from taskqueue.schedules.cron import FIELDS_HINT
    from taskqueue.schedules.declarations import declarations, declared_schedules

    messages: list[CheckMessage] = []
    _, problems = declared_schedules(schedules, check_tasks=True)
    for name, problem in problems:
        where = f"TASKQUEUE['SCHEDULES'][{name!r}]" if name else "TASKQUEUE['SCHEDULES']"
        if name and name not in (schedules if isinstance(schedules, dict) else {}):
            where = f"Schedule {name!r}"
        messages.append(
            _error(
                f"{where} {problem}.",
                "taskqueue.E004",
                hint=FIELDS_HINT if "cron" in problem else None,
            )
        )
    for func in declarations.pending():
        where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
        messages.append(
            _error(
                f"{where} has @taskqueue.periodic but is not registered as a handler.",
                "taskqueue.E004",
                hint="Add @taskqueue.handler(...) to it, or register it with taskqueue.register().",
            )
        )
    return messages
