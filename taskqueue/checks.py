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
        if name == "ALERTS":
            messages += _check_alerts(value)
            continue
        if name == "METRICS":
            messages += _check_metrics(value)
            continue
        if name == "EVENTS":
            messages += _check_events(value)
            continue
        if name == "HEALTH":
            messages += _check_health(value)
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
    messages += _check_tokens(raw.get("MONITORING_TOKENS", DEFAULTS["MONITORING_TOKENS"]))
    messages += _check_schedules(raw.get("SCHEDULES", {}))
    return messages


RETENTION_AGES = ("completed", "cancelled", "reviewed_dead", "workers")


def _check_alerts(alerts: dict[str, Any]) -> list[CheckMessage]:
    """EMAIL and WEBHOOK_CRITICAL_ONLY bools; WEBHOOK_URL an http(s) URL or None;
    WEBHOOK_EVENTS known event names; THROTTLE and WEBHOOK_TIMEOUT positive seconds."""
    from urllib.parse import urlsplit

    from taskqueue.monitoring.alerts import EVENT_SIGNALS

    messages: list[CheckMessage] = []
    for key in ("EMAIL", "WEBHOOK_CRITICAL_ONLY"):
        value = alerts.get(key, DEFAULTS["ALERTS"][key])
        if not isinstance(value, bool):
            messages.append(
                _error(
                    f"TASKQUEUE['ALERTS'][{key!r}] must be True or False, got {value!r}.",
                    "taskqueue.E002",
                )
            )
    url = alerts.get("WEBHOOK_URL")
    if url is not None and not (
        isinstance(url, str) and urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc
    ):
        messages.append(
            _error(
                "TASKQUEUE['ALERTS']['WEBHOOK_URL'] must be an http:// or https:// URL or "
                f"None, got {url!r}.",
                "taskqueue.E002",
            )
        )
    events = alerts.get("WEBHOOK_EVENTS", DEFAULTS["ALERTS"]["WEBHOOK_EVENTS"])
    if not isinstance(events, list | tuple) or not all(e in EVENT_SIGNALS for e in events):
        messages.append(
            _error(
                "TASKQUEUE['ALERTS']['WEBHOOK_EVENTS'] must be a list of event names from "
                f"{', '.join(map(repr, EVENT_SIGNALS))}, got {events!r}.",
                "taskqueue.E002",
            )
        )
    for key in ("THROTTLE", "WEBHOOK_TIMEOUT"):
        value = alerts.get(key, DEFAULTS["ALERTS"][key])
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            messages.append(
                _error(
                    f"TASKQUEUE['ALERTS'][{key!r}] must be a positive number of seconds, "
                    f"got {value!r}.",
                    "taskqueue.E002",
                )
            )
    return messages


EVENT_SEVERITIES = ("info", "warning", "error")


def _check_events(events: dict[str, Any]) -> list[CheckMessage]:
    """LOG a bool; STREAM a severity or None (record nothing); KEEP positive seconds."""
    messages: list[CheckMessage] = []
    log = events.get("LOG", DEFAULTS["EVENTS"]["LOG"])
    if not isinstance(log, bool):
        messages.append(
            _error(
                f"TASKQUEUE['EVENTS']['LOG'] must be True or False, got {log!r}.", "taskqueue.E002"
            )
        )
    stream = events.get("STREAM", DEFAULTS["EVENTS"]["STREAM"])
    if stream is not None and stream not in EVENT_SEVERITIES:
        messages.append(
            _error(
                "TASKQUEUE['EVENTS']['STREAM'] must be the lowest severity the live stream "
                f"keeps ({', '.join(map(repr, EVENT_SEVERITIES))}) or None, got {stream!r}.",
                "taskqueue.E002",
            )
        )
    keep = events.get("KEEP", DEFAULTS["EVENTS"]["KEEP"])
    if isinstance(keep, bool) or not isinstance(keep, int | float) or keep <= 0:
        messages.append(
            _error(
                f"TASKQUEUE['EVENTS']['KEEP'] must be a positive number of seconds, got {keep!r}.",
                "taskqueue.E002",
            )
        )
    return messages


def _check_metrics(metrics: dict[str, Any]) -> list[CheckMessage]:
    """FLUSH_INTERVAL a positive number of seconds; MINUTES_KEPT whole minutes, at least the
    hour the stats view reports on."""
    messages: list[CheckMessage] = []
    interval = metrics.get("FLUSH_INTERVAL", DEFAULTS["METRICS"]["FLUSH_INTERVAL"])
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        messages.append(
            _error(
                "TASKQUEUE['METRICS']['FLUSH_INTERVAL'] must be a positive number of seconds, "
                f"got {interval!r}.",
                "taskqueue.E002",
            )
        )
    kept = metrics.get("MINUTES_KEPT", DEFAULTS["METRICS"]["MINUTES_KEPT"])
    if isinstance(kept, bool) or not isinstance(kept, int) or kept < 60:
        messages.append(
            _error(
                "TASKQUEUE['METRICS']['MINUTES_KEPT'] must be a whole number of minutes, at "
                f"least 60 (the stats view reports on the last hour), got {kept!r}.",
                "taskqueue.E002",
            )
        )
    return messages


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


HEALTH_QUEUE_KEYS = ("MAX_PENDING", "MAX_OLDEST_PENDING")


def _check_health(health: dict[str, Any]) -> list[CheckMessage]:
    """Thresholds positive numbers; QUEUES maps queue names to threshold overrides; PUBLIC
    a bool."""
    messages: list[CheckMessage] = []
    for key in ("MAX_PENDING", "MAX_OLDEST_PENDING", "MAX_DEAD_UNREVIEWED"):
        if key in health:
            messages += _positive_at(f"TASKQUEUE['HEALTH'][{key!r}]", health[key])
    public = health.get("PUBLIC", False)
    if not isinstance(public, bool):
        messages.append(
            _error(
                f"TASKQUEUE['HEALTH']['PUBLIC'] must be True or False, got {public!r}.",
                "taskqueue.E002",
            )
        )
    queues = health.get("QUEUES", {})
    if not isinstance(queues, dict):
        return [
            *messages,
            _error(
                "TASKQUEUE['HEALTH']['QUEUES'] must be a dict of queue name to thresholds, "
                f"got {queues!r}.",
                "taskqueue.E002",
                hint='For example {"emails": {"MAX_PENDING": 50}}.',
            ),
        ]
    for queue, overrides in queues.items():
        where = f"TASKQUEUE['HEALTH']['QUEUES'][{queue!r}]"
        if not isinstance(overrides, dict):
            messages.append(_error(f"{where} must be a dict of thresholds.", "taskqueue.E002"))
            continue
        for key in sorted(set(overrides) - set(HEALTH_QUEUE_KEYS)):
            messages.append(
                _error(
                    f"Unknown key {key!r} in {where}.",
                    "taskqueue.E001",
                    hint=f"Known keys: {', '.join(HEALTH_QUEUE_KEYS)}.",
                )
            )
        for key in HEALTH_QUEUE_KEYS:
            if key in overrides:
                messages += _positive_at(f"{where}[{key!r}]", overrides[key])
    return messages


def _positive_at(where: str, value: Any) -> list[CheckMessage]:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return [_error(f"{where} must be a positive number, got {value!r}.", "taskqueue.E002")]
    return []


def _check_tokens(tokens: Any) -> list[CheckMessage]:
    """A list of non-empty strings; the values are secrets and never appear in messages."""
    if not isinstance(tokens, list | tuple) or not all(
        isinstance(token, str) and len(token) >= 16 for token in tokens
    ):
        return [
            _error(
                "TASKQUEUE['MONITORING_TOKENS'] must be a list of token strings of at least "
                "16 characters each.",
                "taskqueue.E002",
                hint="Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe())'",
            )
        ]
    return []
