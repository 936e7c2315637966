"""``check_settings``: every key of ``settings.TASKQUEUE``, each by its own rule.

Only the keys a project sets are checked against their rules (the defaults are valid); the
database alias, the schedules and the STALE_AFTER / HEARTBEAT_INTERVAL pair are checked
with the defaults applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Warning

from taskqueue.checks.messages import (
    BAD_QUEUE_NAME,
    BAD_URL,
    DATABASE,
    SHORT_CREDENTIAL,
    SQLITE_WITHOUT_WAL,
    STALE_TOO_CLOSE,
    WRONG_TYPE,
    Rule,
    clipped,
    error,
    guarded,
    shown,
    type_name,
)
from taskqueue.checks.rules import (
    ATTEMPTS,
    FLAG,
    POSITIVE_INTEGER,
    SECONDS,
    SECONDS_OR_ZERO,
    Choice,
    Number,
    sorted_keys,
    unknown_key,
)
from taskqueue.checks.schedules import check_schedules
from taskqueue.checks.sections import QUEUE_HINT, is_queue_name, section_rule
from taskqueue.conf import DEFAULTS, MERGED_DICTS
from taskqueue.core.outbound import allow_list_problems

MIN_TOKEN_LENGTH = 16
GENERATE_HINT = "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
VALUES_HIDDEN = "(values are not shown: tokens are secrets)"


def database_alias(where: str, alias: Any) -> list[CheckMessage]:
    """An alias of DATABASES whose engine is PostgreSQL or SQLite (SQLite in WAL mode)."""
    if not isinstance(alias, str):
        return [
            error(
                WRONG_TYPE,
                f"{where} must be the name of a database in DATABASES (a string), "
                f"got {shown(alias)}.",
            )
        ]
    databases = django_settings.DATABASES
    if alias not in databases:
        return [
            error(
                DATABASE,
                f"{where} names {shown(alias)}, which is not in DATABASES.",
                hint=f"DATABASES has: {', '.join(map(shown, sorted_keys(databases)))}.",
            )
        ]
    config = databases[alias] if isinstance(databases[alias], dict) else {}
    engine = config.get("ENGINE", "")
    if not isinstance(engine, str) or not engine.endswith(("postgresql", "sqlite3")):
        return [
            error(
                DATABASE,
                f"taskqueue supports PostgreSQL and SQLite; {shown(alias)} uses {shown(engine)}.",
            )
        ]
    options = config.get("OPTIONS")
    init_command = options.get("init_command", "") if isinstance(options, dict) else ""
    if engine.endswith("sqlite3") and "journal_mode=wal" not in str(init_command).lower():
        return [
            Warning(
                "The task queue is on SQLite without WAL journal mode: workers and "
                "the web server will block each other.",
                hint="Set DATABASES[...]['OPTIONS'] = {'init_command': "
                "'PRAGMA journal_mode=WAL;', 'transaction_mode': 'IMMEDIATE', "
                "'timeout': 20}. SQLite suits development; use PostgreSQL in production.",
                obj="settings.DATABASES",
                id=SQLITE_WITHOUT_WAL,
            )
        ]
    return []


def queue_names(where: str, value: Any) -> list[CheckMessage]:
    """A non-empty list of valid queue names."""
    problem = f"{where} must be a non-empty list of queue names, got {shown(value)}"
    if not isinstance(value, list | tuple):
        return [error(WRONG_TYPE, f"{problem}.", hint=QUEUE_HINT)]
    if not value:
        return [error(BAD_QUEUE_NAME, f"{problem}.", hint=QUEUE_HINT)]
    for queue in value:
        if not isinstance(queue, str):
            return [error(WRONG_TYPE, f"{problem}: {shown(queue)} is not a string.", QUEUE_HINT)]
        if not is_queue_name(queue):
            return [
                error(
                    BAD_QUEUE_NAME,
                    f"{problem}: {shown(queue)} is not a valid queue name.",
                    hint=QUEUE_HINT,
                )
            ]
    return []


def monitoring_tokens(where: str, value: Any) -> list[CheckMessage]:
    """Token strings long enough to be secrets; no message ever shows one."""
    expectation = f"a list of token strings of at least {MIN_TOKEN_LENGTH} characters each"
    if not isinstance(value, list | tuple):
        return [
            error(
                WRONG_TYPE,
                f"{where} must be {expectation}, got {type_name(value)} {VALUES_HIDDEN}.",
                hint=GENERATE_HINT,
            )
        ]
    messages: list[CheckMessage] = []
    for position, token in enumerate(value):
        if not isinstance(token, str):
            messages.append(
                error(
                    WRONG_TYPE,
                    f"{where}[{position}] must be a token string, got {type_name(token)} "
                    f"{VALUES_HIDDEN}.",
                    hint=GENERATE_HINT,
                )
            )
        elif len(token) < MIN_TOKEN_LENGTH:
            messages.append(
                error(
                    SHORT_CREDENTIAL,
                    f"{where}[{position}] has {len(token)} characters: tokens must have at "
                    f"least {MIN_TOKEN_LENGTH} characters {VALUES_HIDDEN}.",
                    hint=GENERATE_HINT,
                )
            )
    return messages


def heartbeat_hosts(where: str, value: Any) -> list[CheckMessage]:
    """Host names ('hc-ping.com', '*.example.com', IP addresses) admin heartbeats may ping."""
    expectation = "a list of host names ('hc-ping.com', '*.example.com', an IP address)"
    if not isinstance(value, list | tuple):
        return [error(WRONG_TYPE, f"{where} must be {expectation}, got {shown(value)}.")]
    for entry in value:
        if not isinstance(entry, str):
            return [
                error(
                    WRONG_TYPE,
                    f"{where} must be {expectation}, got {shown(value)}: {shown(entry)} is "
                    "not a string.",
                )
            ]
    return [error(BAD_URL, f"{clipped(problem)}.") for problem in allow_list_problems(value, where)]


SETTING_RULES: dict[str, Rule] = {
    "DATABASE": database_alias,
    "QUEUES": queue_names,
    "CONCURRENCY": POSITIVE_INTEGER,
    "POOL": Choice(("processes", "threads"), expectation="'processes' or 'threads'"),
    "POLL_INTERVAL": SECONDS,
    "HEARTBEAT_INTERVAL": SECONDS,
    "STALE_AFTER": SECONDS,
    "RESCUE_INTERVAL": SECONDS,
    "SHUTDOWN_TIMEOUT": SECONDS_OR_ZERO,
    "MAX_ATTEMPTS": ATTEMPTS,
    "DEFAULT_TIMEOUT": SECONDS,
    "MAX_PAYLOAD_BYTES": POSITIVE_INTEGER,
    "MAX_MEMORY": Number("a positive number of MiB or None (no ceiling)", none_allowed=True),
    "CANCEL_GRACE": SECONDS,
    "SCHEDULE_GRACE": SECONDS,
    "SCHEDULES": lambda where, value: check_schedules(value),
    "MONITORING_TOKENS": monitoring_tokens,
    "HEARTBEAT_HOSTS": heartbeat_hosts,
    "OUTBOUND_ALLOW_PRIVATE": FLAG,
    **{name: section_rule(name) for name in sorted(MERGED_DICTS)},
}
# Checked even when unset: the default alias may be missing from DATABASES, and code
# declares schedules (@periodic, built-ins) whatever SCHEDULES holds.
CHECKED_WITH_DEFAULTS = ("DATABASE", "SCHEDULES")


def stale_after_warning(configured: dict[Any, Any]) -> list[CheckMessage]:
    """W002 when STALE_AFTER leaves too little room for missed heartbeats."""
    heartbeat = configured.get("HEARTBEAT_INTERVAL", DEFAULTS["HEARTBEAT_INTERVAL"])
    stale = configured.get("STALE_AFTER", DEFAULTS["STALE_AFTER"])
    if SECONDS("", heartbeat) or SECONDS("", stale):
        return []  # reported as errors; no comparison means anything
    if stale > heartbeat * 2:
        return []
    return [
        Warning(
            f"TASKQUEUE['STALE_AFTER'] ({stale}) should be well over twice "
            f"HEARTBEAT_INTERVAL ({heartbeat}), or live workers will be taken for dead.",
            obj="settings.TASKQUEUE",
            id=STALE_TOO_CLOSE,
        )
    ]


def check_settings(
    app_configs: Iterable[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report every problem in ``settings.TASKQUEUE``, each with its id; never raise."""
    configured = getattr(django_settings, "TASKQUEUE", {})
    if not isinstance(configured, dict):
        return [
            error(
                WRONG_TYPE,
                f"TASKQUEUE must be a dict, got {type(configured).__name__}.",
                hint="For example TASKQUEUE = {'QUEUES': ['default'], 'CONCURRENCY': 4}.",
            )
        ]
    messages = [
        unknown_key(f"Unknown TASKQUEUE setting {shown(name)}.", name, DEFAULTS, "settings")
        for name in sorted_keys(configured)
        if name not in DEFAULTS
    ]
    # SETTING_RULES has a rule for each name in DEFAULTS and no other (tests hold it to that).
    for name, rule in SETTING_RULES.items():
        if name in configured:
            messages += guarded(rule, f"TASKQUEUE[{name!r}]", configured[name])
        elif name in CHECKED_WITH_DEFAULTS:
            messages += guarded(rule, f"TASKQUEUE[{name!r}]", DEFAULTS[name])
    messages += guarded(
        lambda where, value: stale_after_warning(value), "TASKQUEUE['STALE_AFTER']", configured
    )
    return messages
