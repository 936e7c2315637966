"""App settings: defaults, live lookups under override_settings, merged dicts, unknown names."""

from __future__ import annotations

import pytest
from django.test import override_settings

from taskqueue.conf import DEFAULTS, MERGED_DICTS, user_settings
from taskqueue.conf import settings as tq_settings


def test_every_default_applies_when_the_project_sets_nothing(settings) -> None:
    del settings.TASKQUEUE
    assert user_settings() == {}
    for name, default in DEFAULTS.items():
        assert getattr(tq_settings, name) == default, name


def test_defaults_match_the_documented_contract() -> None:
    assert DEFAULTS == {
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
        "MAX_MEMORY": None,
        "CANCEL_GRACE": 10,
        "SCHEDULE_GRACE": 600,
        "SCHEDULES": {},
        "HEARTBEAT_HOSTS": [],
        "OUTBOUND_ALLOW_PRIVATE": False,
        "RETENTION": {
            "completed": 604800,
            "cancelled": 604800,
            "reviewed_dead": 2592000,
            "workers": 604800,
            "cron": "*/15 * * * *",
            "batch_size": 1000,
        },
        "HEALTH": {
            "MAX_PENDING": 1000,
            "MAX_OLDEST_PENDING": 1800,
            "MAX_DEAD_UNREVIEWED": 10,
            "QUEUES": {},
            "PUBLIC": False,
        },
        "MONITORING_TOKENS": [],
        "METRICS": {"FLUSH_INTERVAL": 5, "MINUTES_KEPT": 1440},
        "EVENTS": {"LOG": True, "STREAM": "warning", "KEEP": 86400},
        "ALERTS": {
            "EMAIL": True,
            "WEBHOOK_URL": None,
            "WEBHOOK_EVENTS": ["dead_lettered", "circuit_opened", "schedule_late"],
            "WEBHOOK_CRITICAL_ONLY": False,
            "WEBHOOK_TIMEOUT": 5,
            "THROTTLE": 300,
        },
    }
    assert MERGED_DICTS == {"RETENTION", "HEALTH", "METRICS", "EVENTS", "ALERTS"}


def test_test_settings_are_read() -> None:
    # tests/settings.py sets these six; everything else is a default.
    assert tq_settings.POLL_INTERVAL == 0.1
    assert tq_settings.HEARTBEAT_INTERVAL == 1
    assert tq_settings.STALE_AFTER == 3
    assert tq_settings.RESCUE_INTERVAL == 0.5
    assert tq_settings.SHUTDOWN_TIMEOUT == 10
    assert tq_settings.CONCURRENCY == 2


def test_override_settings_takes_effect_without_reload() -> None:
    assert tq_settings.MAX_ATTEMPTS == 3
    with override_settings(TASKQUEUE={"MAX_ATTEMPTS": 9, "QUEUES": ["a", "b"]}):
        assert tq_settings.MAX_ATTEMPTS == 9
        assert tq_settings.QUEUES == ["a", "b"]
        # Keys the override does not name fall back to the defaults, not to the old dict.
        assert tq_settings.POLL_INTERVAL == 1.0
    assert tq_settings.MAX_ATTEMPTS == 3
    assert tq_settings.POLL_INTERVAL == 0.1


def test_pytest_django_settings_fixture_works_too(settings) -> None:
    settings.TASKQUEUE = {"CONCURRENCY": 16}
    assert tq_settings.CONCURRENCY == 16


@pytest.mark.parametrize("name", sorted(MERGED_DICTS))
def test_merged_dicts_keep_the_defaults_of_unnamed_keys(name: str) -> None:
    first_key = sorted(DEFAULTS[name])[0]
    with override_settings(TASKQUEUE={name: {first_key: 12345}}):
        value = getattr(tq_settings, name)
    assert value == {**DEFAULTS[name], first_key: 12345}


def test_retention_override_example() -> None:
    with override_settings(TASKQUEUE={"RETENTION": {"completed": 60}}):
        assert tq_settings.RETENTION == {
            "completed": 60,
            "cancelled": 604800,
            "reviewed_dead": 2592000,
            "workers": 604800,
            "cron": "*/15 * * * *",
            "batch_size": 1000,
        }
    with override_settings(TASKQUEUE={"HEALTH": {"MAX_PENDING": 5}}):
        assert tq_settings.HEALTH == {
            "MAX_PENDING": 5,
            "MAX_OLDEST_PENDING": 1800,
            "MAX_DEAD_UNREVIEWED": 10,
            "QUEUES": {},
            "PUBLIC": False,
        }


def test_a_dict_setting_that_is_not_merged_is_replaced_whole() -> None:
    schedules = {"nightly": {"task": "noop", "cron": "0 3 * * *"}}
    with override_settings(TASKQUEUE={"SCHEDULES": schedules}):
        assert tq_settings.SCHEDULES == schedules


def test_returned_default_dicts_are_copies() -> None:
    retention = tq_settings.RETENTION
    retention["completed"] = 1
    health = tq_settings.HEALTH
    health.clear()
    assert DEFAULTS["RETENTION"]["completed"] == 604800
    assert tq_settings.RETENTION["completed"] == 604800
    assert tq_settings.HEALTH["MAX_PENDING"] == 1000


def test_a_taskqueue_setting_that_is_not_a_dict_reads_as_unset(settings) -> None:
    settings.TASKQUEUE = ["not", "a", "dict"]
    assert user_settings() == {}
    assert tq_settings.MAX_ATTEMPTS == 3


@pytest.mark.parametrize("name", ["MAX_RETRIES", "database", "QUEUE", "_private"])
def test_unknown_attribute_raises_attribute_error(name: str) -> None:
    with pytest.raises(AttributeError) as info:
        getattr(tq_settings, name)
    assert str(info.value) == f"Unknown taskqueue setting: {name!r}"
    assert not hasattr(tq_settings, name)
