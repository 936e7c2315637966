"""Schedules: cron slots across daylight saving time, declarations, checks, and sync.

Firing, lateness and the workers are in test_schedule_firing.py; the admin in
test_admin_schedules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise, takewhile
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import taskqueue
from taskqueue.checks import check_settings
from taskqueue.core.registry import registry
from taskqueue.models import CatchUp, Schedule, ScheduleSource
from taskqueue.schedules import CronError, CronSlots, sync_schedules, validate_cron
from taskqueue.schedules.declarations import declarations, declare_builtin, settings_declarations
from taskqueue.schedules.definitions import CATCH_UP_CHOICES

CLEAN = {"HEARTBEAT_INTERVAL": 10, "STALE_AFTER": 60}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def slots_between(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    slots = CronSlots(expression, zone).after(start)
    return list(takewhile(lambda slot: slot <= end, slots))


@pytest.fixture
def no_declarations() -> Iterator[None]:
    """Start from no code declarations (the test app's handlers stay registered)."""
    with declarations.override():
        yield


# --- cron slots and daylight saving time ----------------------------------------------------


def test_utc_slots_follow_the_cron() -> None:
    slots = CronSlots("0 3 * * *", "UTC")
    assert slots.next_after(utc(2024, 1, 1, 2, 59)) == utc(2024, 1, 1, 3)
    assert slots.next_after(utc(2024, 1, 1, 3)) == utc(2024, 1, 2, 3)  # strictly after
    assert slots.latest_at_or_before(utc(2024, 1, 1, 3)) == utc(2024, 1, 1, 3)


def test_the_sixth_field_is_seconds() -> None:
    slots = CronSlots("* * * * * 15", "UTC")
    assert list(islice(slots.after(utc(2024, 1, 1)), 2)) == [
        utc(2024, 1, 1, 0, 0, 15),
        utc(2024, 1, 1, 0, 1, 15),
    ]
    every_second = CronSlots("* * * * * *", "UTC")
    assert every_second.next_after(utc(2024, 1, 1, 0, 0, 0) + timedelta(microseconds=500)) == utc(
        2024, 1, 1, 0, 0, 1
    )


def test_new_york_spring_forward_fires_a_skipped_time_when_the_gap_ends() -> None:
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 does not exist that day.
    slots = slots_between("30 2 * * *", "America/New_York", utc(2024, 3, 9), utc(2024, 3, 12))
    assert slots == [utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7, 0), utc(2024, 3, 11, 6, 30)]


def test_new_york_spring_forward_fires_slots_mapping_to_one_instant_once() -> None:
    # 02:00 and 02:30 fall in the gap and 03:00 EDT is its end: all three are 07:00 UTC.
    slots = slots_between(
        "*/30 * * * *", "America/New_York", utc(2024, 3, 10, 6), utc(2024, 3, 10, 8)
    )
    assert slots == [
        utc(2024, 3, 10, 6, 30),  # 01:30 EST
        utc(2024, 3, 10, 7, 0),  # 03:00 EDT (02:00, 02:30 and 03:00 wall time)
        utc(2024, 3, 10, 7, 30),  # 03:30 EDT
        utc(2024, 3, 10, 8, 0),
    ]


def test_new_york_fall_back_fires_a_repeated_time_once_at_its_first_occurrence() -> None:
    # 2024-11-03: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:30 happens twice.
    slots = slots_between("30 1 * * *", "America/New_York", utc(2024, 11, 2), utc(2024, 11, 5))
    assert slots == [utc(2024, 11, 2, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]
    half_hourly = slots_between(
        "*/30 * * * *", "America/New_York", utc(2024, 11, 3, 4), utc(2024, 11, 3, 7, 30)
    )
    # The repeated hour's second pass (06:00-07:00 UTC) holds no slots.
    assert half_hourly == [
        utc(2024, 11, 3, 4, 30),
        utc(2024, 11, 3, 5, 0),
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 3, 7, 0),
        utc(2024, 11, 3, 7, 30),
    ]


def test_from_inside_the_repeated_hour_the_next_slot_is_after_it() -> None:
    slots = CronSlots("*/30 * * * *", "America/New_York")
    inside = utc(2024, 11, 3, 6, 15)  # 01:15 EST, the second pass
    assert slots.next_after(inside) == utc(2024, 11, 3, 7, 0)
    assert list(islice(slots.at_or_before(utc(2024, 11, 3, 6, 45)), 3)) == [
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 3, 5, 0),
        utc(2024, 11, 3, 4, 30),
    ]
    every_second = CronSlots("* * * * * *", "America/New_York")
    assert every_second.next_after(utc(2024, 11, 3, 6, 0, 1)) == utc(2024, 11, 3, 7)


def test_london_transitions() -> None:
    # 2024-03-31 01:00 GMT jumps to 02:00 BST; 2024-10-27 02:00 BST falls back to 01:00 GMT.
    spring = slots_between("30 1 * * *", "Europe/London", utc(2024, 3, 30), utc(2024, 4, 2))
    assert spring == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]
    autumn = slots_between("30 1 * * *", "Europe/London", utc(2024, 10, 26), utc(2024, 10, 29))
    assert autumn == [utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/New_York", utc(2024, 3, 10)),
        ("America/New_York", utc(2024, 11, 3)),
        ("Europe/London", utc(2024, 3, 31)),
        ("Europe/London", utc(2024, 10, 27)),
    ],
)
def test_slots_strictly_increase_and_agree_both_ways_across_a_transition(
    zone: str, day: datetime
) -> None:
    start, end = day, day + timedelta(days=1)
    forward = slots_between("*/5 * * * *", zone, start, end)
    assert all(a < b for a, b in pairwise(forward))
    backward = list(
        takewhile(lambda slot: slot > start, CronSlots("*/5 * * * *", zone).at_or_before(end))
    )
    assert backward[::-1] == forward
    assert 270 <= len(forward) <= 288  # a day of 5-minute slots, less an hour at most


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "it has 3 fields"),
        ("* * * * * * *", "it has 7 fields"),
        ("0 0 30 2 *", "never matches a date"),
        ("@reboot", "invalid cron expression '@reboot'"),
        ("", "it is empty"),
        (5, "it must be a string"),
    ],
)
def test_invalid_cron_expressions_say_why(expression: Any, fragment: str) -> None:
    with pytest.raises(CronError, match="cron expression") as info:
        validate_cron(expression)
    assert fragment in str(info.value)


def test_cron_is_normalised_and_aliases_accepted() -> None:
    assert validate_cron("  0   3 * * * ") == "0 3 * * *"
    assert validate_cron("@Daily") == "@daily"
    assert CronSlots("@hourly").next_after(utc(2024, 1, 1, 0, 10)) == utc(2024, 1, 1, 1)


def test_unknown_time_zone_is_rejected() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        CronSlots("* * * * *", "Mars/Olympus")


def test_catch_up_choices_match_the_model() -> None:
    assert tuple(CATCH_UP_CHOICES) == tuple(CatchUp.values)


# --- @taskqueue.periodic ------------------------------------------------------------------


def declared(name: str) -> Any:
    return {d.name: d for d in declarations.code()}[name]


def test_periodic_above_or_below_handler_declares_a_schedule(no_declarations: None) -> None:
    with registry.override():

        @taskqueue.periodic("0 3 * * *", timezone="Europe/Paris", payload={"label": "a"})
        @taskqueue.handler("sched_above")
        def above(label: str) -> None: ...

        @taskqueue.handler("sched_below")
        @taskqueue.periodic("*/10 * * * * *", name="below-every-10s", catch_up="all", grace=30)
        def below() -> None: ...

        assert isinstance(above, taskqueue.TaskHandler)
        assert isinstance(below, taskqueue.TaskHandler)
        first = declared("sched_above")  # the name defaults to the task type
        assert (first.task, first.cron, first.timezone, first.payload) == (
            "sched_above",
            "0 3 * * *",
            "Europe/Paris",
            {"label": "a"},
        )
        second = declared("below-every-10s")
        assert (second.task, second.catch_up, second.grace) == ("sched_below", "all", 30.0)
        assert declarations.pending() == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"cron": "0 25 * * *"}, "@taskqueue.periodic('0 25 * * *'): invalid cron expression"),
        ({"cron": "0 3 * * *", "timezone": "Nowhere/City"}, "unknown time zone 'Nowhere/City'"),
        ({"cron": "0 3 * * *", "catch_up": "some"}, "catch_up must be one of"),
        ({"cron": "0 3 * * *", "payload": {"when": datetime(2024, 1, 1)}}, "payload['when']"),
        ({"cron": "0 3 * * *", "heartbeat_url": "file:///etc/passwd"}, "http:// or https://"),
        ({"cron": "0 3 * * *", "grace": 0}, "grace must be a positive number"),
        ({"cron": "0 3 * * *", "queue": "bad queue"}, "invalid queue name"),
    ],
)
def test_periodic_rejects_bad_options_where_written(
    no_declarations: None, options: dict[str, Any], fragment: str
) -> None:
    cron = options.pop("cron")
    with pytest.raises(ImproperlyConfigured) as info:
        taskqueue.periodic(cron, **options)
    assert fragment in str(info.value)


def test_periodic_payload_must_fit_the_handler(no_declarations: None) -> None:
    with registry.override(), pytest.raises(ImproperlyConfigured, match="does not match handler"):

        @taskqueue.periodic("0 3 * * *", payload={"nope": 1})
        @taskqueue.handler("sched_payload")
        def handler_(label: str) -> None: ...


def test_periodic_duplicate_name_is_an_error(no_declarations: None) -> None:
    with registry.override():

        @taskqueue.periodic("0 3 * * *", name="nightly")
        @taskqueue.handler("sched_one")
        def one() -> None: ...

        with pytest.raises(ImproperlyConfigured, match="'nightly' is declared twice"):

            @taskqueue.periodic("0 4 * * *", name="nightly")
            @taskqueue.handler("sched_two")
            def two() -> None: ...


def test_periodic_on_a_function_that_is_no_handler_fails_the_check(no_declarations: None) -> None:
    @taskqueue.periodic("0 3 * * *")
    def orphan() -> None: ...

    with override_settings(TASKQUEUE=CLEAN):
        messages = check_settings()
    assert [m.id for m in messages] == ["taskqueue.E004"]
    assert "orphan has @taskqueue.periodic but is not registered as a handler" in messages[0].msg


# --- settings and manage.py check ---------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"task": "noop", "cron": "0 3 * *"}, "invalid cron expression '0 3 * *'"),
        ({"task": "noop", "cron": "0 3 * * *", "timezone": "Europe/Pariss"}, "'Europe/Pariss'"),
        ({"task": "noop", "cron": "0 3 * * *", "every": 2}, "unknown key(s) 'every'"),
        ({"task": "nope", "cron": "0 3 * * *"}, "names task 'nope', which has no registered"),
        ({"task": "noop", "cron": "0 3 * * *", "payload": [1]}, "payload must be a dict"),
        ({"task": "noop", "cron": "0 3 * * *", "payload": {"x": 1}}, "does not match handler"),
        ({"task": "noop", "cron": "0 3 * * *", "enabled": "yes"}, "enabled must be True or"),
    ],
)
def test_bad_settings_schedules_are_e004_naming_schedule_and_problem(
    entry: dict[str, Any], fragment: str
) -> None:
    with override_settings(TASKQUEUE={**CLEAN, "SCHEDULES": {"nightly": entry}}):
        messages = check_settings()
    assert [m.id for m in messages] == ["taskqueue.E004"]
    assert "TASKQUEUE['SCHEDULES']['nightly']" in messages[0].msg
    assert fragment in messages[0].msg


def test_settings_schedule_clashing_with_code_is_e004(no_declarations: None) -> None:
    declare_builtin("shared-name", "noop", "0 3 * * *")
    schedules = {"shared-name": {"task": "noop", "cron": "0 4 * * *"}}
    with override_settings(TASKQUEUE={**CLEAN, "SCHEDULES": schedules}):
        messages = check_settings()
    assert [m.id for m in messages] == ["taskqueue.E004"]
    assert "also declared in code" in messages[0].msg


def test_settings_declarations_carry_every_option() -> None:
    valid, problems = settings_declarations(
        {
            "hourly": {
                "task": "echo",
                "cron": "0 * * * *",
                "timezone": "Asia/Tokyo",
                "payload": {"value": 1},
                "queue": "reports",
                "priority": "high",
                "catch_up": "skip",
                "grace": 60,
                "heartbeat_url": "https://hc.example.com/ping/abc",
                "enabled": False,
                "description": "hourly echo",
            }
        }
    )
    assert problems == []
    (only,) = valid
    assert only.definition() == {
        "task_type": "echo",
        "cron": "0 * * * *",
        "timezone": "Asia/Tokyo",
        "payload": {"value": 1},
        "queue": "reports",
        "priority": 50,
        "catch_up": "skip",
        "grace": 60.0,
        "heartbeat_url": "https://hc.example.com/ping/abc",
        "description": "hourly echo",
        "source": "settings",
    }
    assert only.enabled is False


# --- sync ---------------------------------------------------------------------------------


def rows() -> dict[str, Schedule]:
    return {row.name: row for row in Schedule.objects.all()}


@pytest.mark.django_db
def test_sync_creates_updates_and_deletes_declared_schedules(no_declarations: None) -> None:
    now = utc(2024, 6, 1, 12, 0, 30)
    declare_builtin("from-code", "noop", "*/5 * * * *")
    settings_schedules = {"from-settings": {"task": "echo", "cron": "0 3 * * *"}}
    with override_settings(TASKQUEUE={**CLEAN, "SCHEDULES": settings_schedules}):
        result = sync_schedules(now=now)
    assert sorted(result.created) == ["from-code", "from-settings"]
    found = rows()
    assert found["from-code"].source == ScheduleSource.CODE
    assert found["from-code"].next_run_at == utc(2024, 6, 1, 12, 5)
    assert found["from-settings"].source == ScheduleSource.SETTINGS
    assert found["from-settings"].next_run_at == utc(2024, 6, 2, 3)

    # Staff pause the code schedule; a sync with the same declarations changes nothing.
    Schedule.objects.filter(name="from-code").update(enabled=False)
    with override_settings(TASKQUEUE={**CLEAN, "SCHEDULES": settings_schedules}):
        result = sync_schedules(now=now)
    assert (result.created, result.updated, result.deleted) == ([], [], [])

    # The cron changes in code and the settings schedule goes away.
    with declarations.override():
        declare_builtin("from-code", "noop", "*/10 * * * *", payload={})
        with override_settings(TASKQUEUE=CLEAN):
            result = sync_schedules(now=now + timedelta(minutes=10))
    assert (result.updated, result.deleted) == (["from-code"], ["from-settings"])
    row = rows()["from-code"]
    assert row.cron == "*/10 * * * *"
    assert row.next_run_at == utc(2024, 6, 1, 12, 20)  # recomputed from the new cron
    assert row.enabled is False  # the admin's pause sticks


@pytest.mark.django_db
def test_sync_never_touches_admin_schedules(no_declarations: None, caplog) -> None:
    admin_made = Schedule.objects.create(
        name="nightly", task_type="echo", cron="0 1 * * *", source=ScheduleSource.ADMIN
    )
    other_admin = Schedule.objects.create(
        name="hand-made", task_type="noop", cron="0 2 * * *", source=ScheduleSource.ADMIN
    )
    declare_builtin("nightly", "noop", "0 3 * * *")
    with override_settings(TASKQUEUE=CLEAN), caplog.at_level("WARNING", "taskqueue"):
        result = sync_schedules()
    assert result.clashing == ["nightly"]
    assert "a schedule of that name was made in the admin" in caplog.text
    admin_made.refresh_from_db()
    assert (admin_made.cron, admin_made.task_type) == ("0 1 * * *", "echo")
    assert Schedule.objects.filter(pk=other_admin.pk).exists()


@pytest.mark.django_db
def test_declared_disabled_disables_and_built_in_returning_none_is_removed(
    no_declarations: None,
) -> None:
    cron: dict[str, str | None] = {"value": "*/15 * * * *"}
    declare_builtin("retention-like", "noop", lambda: cron["value"])
    settings_schedules = {"off": {"task": "noop", "cron": "0 3 * * *", "enabled": False}}
    with override_settings(TASKQUEUE={**CLEAN, "SCHEDULES": settings_schedules}):
        sync_schedules()
        assert rows()["off"].enabled is False
        assert rows()["retention-like"].cron == "*/15 * * * *"
        cron["value"] = None
        result = sync_schedules()
    assert result.deleted == ["retention-like"]
    assert "retention-like" not in rows()
