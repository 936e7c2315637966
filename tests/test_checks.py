"""``manage.py check`` messages for ``settings.TASKQUEUE``, by stable id."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import ERROR, WARNING, CheckMessage, run_checks
from django.test import override_settings

from taskqueue.checks import check_settings

CLEAN = {"HEARTBEAT_INTERVAL": 10, "STALE_AFTER": 60}


def check(**taskqueue: Any) -> list[CheckMessage]:
    with override_settings(TASKQUEUE={**CLEAN, **taskqueue}):
        return check_settings()


def ids(messages: list[CheckMessage]) -> list[str]:
    return [message.id for message in messages]


@contextmanager
def extra_database(alias: str, config: dict[str, Any]) -> Iterator[None]:
    """Add a DATABASES entry for the checks to inspect (no connection is opened)."""
    with warnings.catch_warnings():
        # Django warns that overriding DATABASES does not reconnect: the checks only read it.
        warnings.simplefilter("ignore", UserWarning)
        with override_settings(DATABASES={**django_settings.DATABASES, alias: config}):
            yield


def test_the_test_settings_are_clean() -> None:
    assert check_settings() == []


def test_no_taskqueue_setting_at_all_is_clean(settings) -> None:
    del settings.TASKQUEUE
    assert check_settings() == []


def test_the_documented_example_configuration_is_clean() -> None:
    messages = check(
        DATABASE="default",
        QUEUES=["default"],
        CONCURRENCY=4,
        POLL_INTERVAL=1.0,
        HEARTBEAT_INTERVAL=10,
        STALE_AFTER=60,
        RESCUE_INTERVAL=15,
        SHUTDOWN_TIMEOUT=25,
        MAX_ATTEMPTS=3,
        DEFAULT_TIMEOUT=1800,
        MAX_PAYLOAD_BYTES=1048576,
        SCHEDULES={
            "nightly-cleanup": {
                "task": "cleanup",
                "cron": "0 3 * * *",
                "timezone": "UTC",
                "payload": {},
            }
        },
        RETENTION={"completed": 7 * 86400, "cancelled": 7 * 86400, "reviewed_dead": 30 * 86400},
        HEALTH={"MAX_PENDING": 1000, "MAX_OLDEST_PENDING": 1800, "MAX_DEAD_UNREVIEWED": 10},
    )
    assert messages == []


def test_unknown_setting_is_e001_with_a_hint() -> None:
    messages = check(MAX_RETRIES=5, POLL=1)
    assert ids(messages) == ["taskqueue.E001", "taskqueue.E001"]
    assert [m.msg for m in messages] == [
        "Unknown TASKQUEUE setting 'MAX_RETRIES'.",
        "Unknown TASKQUEUE setting 'POLL'.",
    ]
    assert "POLL_INTERVAL" in messages[0].hint
    assert all(m.level == ERROR and m.obj == "settings.TASKQUEUE" for m in messages)


@pytest.mark.parametrize("name", ["RETENTION", "HEALTH"])
def test_unknown_key_in_a_merged_dict_is_e001(name: str) -> None:
    messages = check(**{name: {"bogus": 1}})
    assert ids(messages) == ["taskqueue.E001"]
    assert messages[0].msg == f"Unknown key 'bogus' in TASKQUEUE[{name!r}]."


def test_taskqueue_that_is_not_a_dict_is_e001(settings) -> None:
    settings.TASKQUEUE = [("CONCURRENCY", 4)]
    messages = check_settings()
    assert ids(messages) == ["taskqueue.E001"]
    assert messages[0].msg == "TASKQUEUE must be a dict, got list."


INTEGER_KEYS = ["CONCURRENCY", "MAX_ATTEMPTS", "MAX_PAYLOAD_BYTES"]
NUMBER_KEYS = ["POLL_INTERVAL", "HEARTBEAT_INTERVAL", "STALE_AFTER", "RESCUE_INTERVAL"]
NUMBER_KEYS += ["DEFAULT_TIMEOUT"]


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, bad) for name in INTEGER_KEYS for bad in (0, -1, 2.5, "4", True, None)]
    + [(name, bad) for name in NUMBER_KEYS for bad in (0, -0.5, "1", False, None)],
)
def test_bad_numeric_value_is_e002_naming_the_key(name: str, value: Any) -> None:
    messages = check(**{name: value})
    errors = [m for m in messages if m.level >= ERROR]
    assert ids(errors) == ["taskqueue.E002"]
    assert errors[0].msg.startswith(f"TASKQUEUE[{name!r}] must be a positive")
    assert repr(value) in errors[0].msg
    # A bad interval may also make the stale/heartbeat comparison meaningless: only W002.
    assert set(ids(messages)) - {"taskqueue.E002", "taskqueue.W002"} == set()


@pytest.mark.parametrize("name", INTEGER_KEYS + NUMBER_KEYS)
def test_good_numeric_values_pass(name: str) -> None:
    value = 120 if name == "STALE_AFTER" else 2
    assert check(**{name: value}) == []


@pytest.mark.parametrize("value", [-1, -0.1, "25", True])
def test_bad_shutdown_timeout_is_e002(value: Any) -> None:
    messages = check(SHUTDOWN_TIMEOUT=value)
    assert ids(messages) == ["taskqueue.E002"]
    assert "SHUTDOWN_TIMEOUT" in messages[0].msg


def test_zero_shutdown_timeout_is_allowed() -> None:
    assert check(SHUTDOWN_TIMEOUT=0) == []


@pytest.mark.parametrize("value", [[], "default", ["ok", "has space"], [""], [5], None])
def test_bad_queues_is_e002(value: Any) -> None:
    messages = check(QUEUES=value)
    assert ids(messages) == ["taskqueue.E002"]
    assert messages[0].msg.startswith("TASKQUEUE['QUEUES'] must be a non-empty list")
    assert messages[0].hint is not None


@pytest.mark.parametrize("name", ["RETENTION", "HEALTH"])
@pytest.mark.parametrize("value", [0, -5, "7d", None])
def test_bad_merged_dict_value_is_e002(name: str, value: Any) -> None:
    key = sorted({"RETENTION": ["completed"], "HEALTH": ["MAX_PENDING"]}[name])[0]
    messages = check(**{name: {key: value}})
    if name == "RETENTION" and value is None:
        assert messages == []  # a RETENTION age of None keeps those rows forever
        return
    assert ids(messages) == ["taskqueue.E002"]
    assert key in messages[0].msg


@pytest.mark.parametrize("name", ["RETENTION", "HEALTH"])
def test_merged_dict_that_is_not_a_dict_is_e002(name: str) -> None:
    messages = check(**{name: 3600})
    assert ids(messages) == ["taskqueue.E002"]
    assert messages[0].msg == f"TASKQUEUE[{name!r}] must be a dict."


def test_unknown_database_alias_is_e003() -> None:
    messages = check(DATABASE="queue")
    assert ids(messages) == ["taskqueue.E003"]
    assert messages[0].msg == "TASKQUEUE['DATABASE'] names 'queue', which is not in DATABASES."


def test_unsupported_database_engine_is_e003() -> None:
    with extra_database("queue", {"ENGINE": "django.db.backends.mysql", "NAME": "q"}):
        messages = check(DATABASE="queue")
    assert ids(messages) == ["taskqueue.E003"]
    assert "django.db.backends.mysql" in messages[0].msg


def test_sqlite_without_wal_is_w001() -> None:
    with extra_database("queue", {"ENGINE": "django.db.backends.sqlite3", "NAME": "q.db"}):
        messages = check(DATABASE="queue")
    assert ids(messages) == ["taskqueue.W001"]
    assert messages[0].level == WARNING
    assert "journal_mode=WAL" in messages[0].hint


def test_sqlite_with_wal_is_clean() -> None:
    config = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "q.db",
        "OPTIONS": {"init_command": "PRAGMA journal_mode=wal;"},
    }
    with extra_database("queue", config):
        assert check(DATABASE="queue") == []


def test_postgresql_queue_database_is_clean() -> None:
    with extra_database("queue", {"ENGINE": "django.db.backends.postgresql", "NAME": "q"}):
        assert check(DATABASE="queue") == []


@pytest.mark.parametrize(("heartbeat", "stale"), [(10, 20), (10, 15), (30, 60), (5, 5), (1.5, 3.0)])
def test_stale_after_too_close_to_heartbeat_is_w002(heartbeat: float, stale: float) -> None:
    messages = check(HEARTBEAT_INTERVAL=heartbeat, STALE_AFTER=stale)
    assert ids(messages) == ["taskqueue.W002"]
    assert messages[0].level == WARNING
    assert f"({stale})" in messages[0].msg
    assert f"({heartbeat})" in messages[0].msg


def test_stale_after_just_over_twice_the_heartbeat_is_accepted() -> None:
    assert check(HEARTBEAT_INTERVAL=10, STALE_AFTER=21) == []


def test_w002_compares_with_the_default_heartbeat() -> None:
    # HEARTBEAT_INTERVAL unset: the default of 10 s applies.
    with override_settings(TASKQUEUE={"STALE_AFTER": 20}):
        assert ids(check_settings()) == ["taskqueue.W002"]


@pytest.mark.parametrize(
    ("schedules", "fragment"),
    [
        ([], "must be a dict of name to schedule"),
        ({"n": "0 3 * * *"}, "TASKQUEUE['SCHEDULES']['n'] must be a dict with 'task' and 'cron'"),
        ({"n": {"task": "noop"}}, "must be a dict with 'task' and 'cron'"),
        ({"n": {"cron": "* * * * *"}}, "must be a dict with 'task' and 'cron'"),
        ({"n": {"task": "noop", "cron": "61 * * * *"}}, "invalid cron expression '61 * * * *'"),
        ({"n": {"task": "noop", "cron": "every day"}}, "invalid cron expression 'every day'"),
        ({"n": {"task": "noop", "cron": 5}}, "invalid cron expression 5"),
        ({"n": {"task": "noop", "cron": ""}}, "invalid cron expression ''"),
    ],
)
def test_bad_schedules_are_e004(schedules: Any, fragment: str) -> None:
    messages = check(SCHEDULES=schedules)
    assert ids(messages) == ["taskqueue.E004"]
    assert fragment in messages[0].msg


def test_each_bad_schedule_is_reported() -> None:
    messages = check(
        SCHEDULES={
            "good": {"task": "noop", "cron": "*/5 * * * *"},
            "bad-cron": {"task": "noop", "cron": "* * *"},
            "no-task": {"cron": "0 0 * * *"},
        }
    )
    assert ids(messages) == ["taskqueue.E004", "taskqueue.E004"]
    assert "'bad-cron'" in messages[0].msg
    assert "'no-task'" in messages[1].msg


def test_six_field_cron_with_seconds_is_accepted() -> None:
    assert check(SCHEDULES={"n": {"task": "noop", "cron": "0 0 3 * * *"}}) == []


def test_several_problems_are_all_reported() -> None:
    messages = check(BOGUS=1, CONCURRENCY=0, DATABASE="nope", SCHEDULES={"x": {}})
    assert sorted(ids(messages)) == [
        "taskqueue.E001",
        "taskqueue.E002",
        "taskqueue.E003",
        "taskqueue.E004",
    ]


def test_the_check_is_registered_with_django() -> None:
    with override_settings(TASKQUEUE={**CLEAN, "CONCURRENCY": 0}):
        messages = run_checks()
    taskqueue_ids = [m.id for m in messages if m.id and m.id.startswith("taskqueue.")]
    assert taskqueue_ids == ["taskqueue.E002"]
