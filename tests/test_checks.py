"""``manage.py check`` messages for ``settings.TASKQUEUE``: one stable id per kind of problem.

The ids are listed in docs/checks.md. W003 (queues no worker serves) is tested in
tests/test_checks_queues.py; fuzzing, the id table and real processes in
tests/test_checks_robustness.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import ERROR, WARNING, CheckMessage, run_checks
from django.test import override_settings

from taskqueue.checks import check_settings
from taskqueue.checks.messages import shown
from taskqueue.conf import DEFAULTS, MERGED_DICTS

CLEAN = {"HEARTBEAT_INTERVAL": 10, "STALE_AFTER": 60}
NAN = float("nan")
INF = float("inf")
TYPE, FINITE, RANGE = "taskqueue.E002", "taskqueue.E005", "taskqueue.E006"
UNKNOWN, SCHEDULE, CHOICE = "taskqueue.E001", "taskqueue.E004", "taskqueue.E007"
QUEUE_NAME, SHORT_TOKEN, URL = "taskqueue.E008", "taskqueue.E009", "taskqueue.E010"


def check(**taskqueue: Any) -> list[CheckMessage]:
    with override_settings(TASKQUEUE={**CLEAN, **taskqueue}):
        return check_settings()


def param_id(value: Any) -> str:
    """A test id for any value (pytest cannot print an integer of 5,000 digits)."""
    return shown(value)[:30]


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


def test_taskqueue_that_is_not_a_dict_is_e002(settings) -> None:
    settings.TASKQUEUE = [("CONCURRENCY", 4)]
    messages = check_settings()
    assert ids(messages) == ["taskqueue.E002"]
    assert messages[0].msg == "TASKQUEUE must be a dict, got list."


INTEGER_KEYS = ["CONCURRENCY", "MAX_ATTEMPTS", "MAX_PAYLOAD_BYTES"]
NUMBER_KEYS = ["POLL_INTERVAL", "HEARTBEAT_INTERVAL", "STALE_AFTER", "RESCUE_INTERVAL"]
NUMBER_KEYS += ["DEFAULT_TIMEOUT", "CANCEL_GRACE", "SCHEDULE_GRACE", "MAX_MEMORY"]
HUGE = 10**5000  # Python refuses to print it: the message must still be written
BAD_INTEGERS = [(0, RANGE), (-1, RANGE), (2.5, TYPE), (4.0, TYPE), ("4", TYPE), (True, TYPE)]
BAD_INTEGERS += [(None, TYPE), ([4], TYPE), (NAN, FINITE), (INF, FINITE), (2**63, RANGE)]
BAD_NUMBERS = [(0, RANGE), (-0.5, RANGE), (-0.0, RANGE), ("1", TYPE), (False, TYPE), ([1], TYPE)]
BAD_NUMBERS += [({"s": 1}, TYPE), (Decimal("1"), TYPE), (NAN, FINITE), (INF, FINITE)]
BAD_NUMBERS += [(-INF, FINITE), (HUGE, RANGE), (-HUGE, RANGE)]


@pytest.mark.parametrize(
    ("name", "value", "id_"),
    [(name, bad, id_) for name in INTEGER_KEYS for bad, id_ in BAD_INTEGERS]
    + [(name, bad, id_) for name in NUMBER_KEYS for bad, id_ in BAD_NUMBERS]
    + [(name, None, TYPE) for name in NUMBER_KEYS if name != "MAX_MEMORY"],
    ids=param_id,
)
def test_bad_numeric_value_is_one_error_of_its_kind(name: str, value: Any, id_: str) -> None:
    messages = check(**{name: value})
    # One error; no W002 either: a bad interval makes the stale/heartbeat comparison moot.
    assert ids(messages) == [id_]
    assert messages[0].msg.startswith(f"TASKQUEUE[{name!r}] must be a positive")
    huge = isinstance(value, int) and abs(value) == HUGE
    assert ("an integer of 16610 bits" if huge else repr(value)) in messages[0].msg


@pytest.mark.parametrize("name", ["POLL_INTERVAL", "STALE_AFTER", "DEFAULT_TIMEOUT"])
def test_durations_over_ten_years_are_out_of_range(name: str) -> None:
    assert check(**{name: 315_619_200}) == []
    messages = check(**{name: 315_619_201})
    assert ids(messages) == [RANGE]
    assert messages[0].msg.endswith("over the maximum of 10 years (315,619,200 s).")


def test_max_attempts_is_bounded_like_a_handler_option() -> None:
    assert check(MAX_ATTEMPTS=1000) == []
    messages = check(MAX_ATTEMPTS=1001)
    assert ids(messages) == [RANGE]
    assert "over the maximum of 1000 attempts" in messages[0].msg


def test_nan_message_says_why() -> None:
    [message] = check(STALE_AFTER=NAN)
    assert message.msg == (
        "TASKQUEUE['STALE_AFTER'] must be a positive number of seconds, got nan: NaN and "
        "infinities are not numbers taskqueue can use."
    )
    assert "never stops" in message.hint


def test_max_memory_none_means_no_ceiling() -> None:
    assert check(MAX_MEMORY=None) == []
    assert check(MAX_MEMORY=512.5) == []


@pytest.mark.parametrize("name", INTEGER_KEYS + NUMBER_KEYS)
def test_good_numeric_values_pass(name: str) -> None:
    value = 120 if name == "STALE_AFTER" else 2
    assert check(**{name: value}) == []


@pytest.mark.parametrize(
    ("value", "id_"), [(-1, RANGE), (-0.1, RANGE), ("25", TYPE), (True, TYPE), (NAN, FINITE)]
)
def test_bad_shutdown_timeout_is_reported(value: Any, id_: str) -> None:
    messages = check(SHUTDOWN_TIMEOUT=value)
    assert ids(messages) == [id_]
    assert messages[0].msg.startswith("TASKQUEUE['SHUTDOWN_TIMEOUT'] must be a number of seconds")


def test_zero_shutdown_timeout_is_allowed() -> None:
    assert check(SHUTDOWN_TIMEOUT=0) == []


@pytest.mark.parametrize(
    ("value", "id_"),
    [
        ([], QUEUE_NAME),
        ("default", TYPE),
        (["ok", "has space"], QUEUE_NAME),
        ([""], QUEUE_NAME),
        (["default\n"], QUEUE_NAME),
        ([5], TYPE),
        (None, TYPE),
        ({"default": 1}, TYPE),
    ],
)
def test_bad_queues_are_reported(value: Any, id_: str) -> None:
    messages = check(QUEUES=value)
    assert ids(messages) == [id_]
    assert messages[0].msg.startswith("TASKQUEUE['QUEUES'] must be a non-empty list")
    assert messages[0].hint is not None


@pytest.mark.parametrize("name", ["RETENTION", "HEALTH"])
@pytest.mark.parametrize(
    ("value", "id_"), [(0, RANGE), (-5, RANGE), ("7d", TYPE), (None, TYPE), (NAN, FINITE)]
)
def test_bad_merged_dict_value_is_reported(name: str, value: Any, id_: str) -> None:
    key = {"RETENTION": "completed", "HEALTH": "MAX_PENDING"}[name]
    messages = check(**{name: {key: value}})
    if name == "RETENTION" and value is None:
        assert messages == []  # a RETENTION age of None keeps those rows forever
        return
    assert ids(messages) == [id_]
    assert key in messages[0].msg


@pytest.mark.parametrize("name", sorted(MERGED_DICTS))
@pytest.mark.parametrize("value", [3600, ["a"], "x", None, NAN])
def test_merged_dict_that_is_not_a_dict_is_e002(name: str, value: Any) -> None:
    messages = check(**{name: value})
    assert ids(messages) == [TYPE]
    assert messages[0].msg == f"TASKQUEUE[{name!r}] must be a dict, got {value!r}."


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
        "taskqueue.E003",
        "taskqueue.E004",
        "taskqueue.E006",
    ]


def test_the_check_is_registered_with_django() -> None:
    with override_settings(TASKQUEUE={**CLEAN, "CONCURRENCY": 0}):
        messages = run_checks()
    errors = [m.id for m in messages if m.id and m.id.startswith("taskqueue.E")]
    assert errors == [RANGE]


# --- every kind of problem, every key ----------------------------------------------------


def test_database_given_as_a_list_is_e002_not_a_crash() -> None:
    messages = check(DATABASE=["default"])
    assert ids(messages) == [TYPE]
    assert messages[0].msg == (
        "TASKQUEUE['DATABASE'] must be the name of a database in DATABASES (a string), "
        "got ['default']."
    )
    with override_settings(TASKQUEUE={**CLEAN, "DATABASE": ["default"]}):
        assert [m.id for m in run_checks() if m.id == TYPE] == [TYPE]


@pytest.mark.parametrize("value", [None, 5, {"default": 1}, NAN])
def test_database_of_another_type_is_e002(value: Any) -> None:
    assert ids(check(DATABASE=value)) == [TYPE]


# Keys of the merged dicts by the rule they follow (every key is listed: see the guard below).
SECTION_SECONDS = [("HEALTH", "MAX_OLDEST_PENDING"), ("METRICS", "FLUSH_INTERVAL")]
SECTION_SECONDS += [("EVENTS", "KEEP"), ("ALERTS", "WEBHOOK_TIMEOUT"), ("ALERTS", "THROTTLE")]
SECTION_SECONDS += [("RETENTION", age) for age in ("completed", "cancelled", "reviewed_dead")]
SECTION_SECONDS += [("RETENTION", "workers")]
SECTION_COUNTS = [("HEALTH", "MAX_PENDING"), ("HEALTH", "MAX_DEAD_UNREVIEWED")]
SECTION_INTEGERS = [("RETENTION", "batch_size"), ("METRICS", "MINUTES_KEPT")]
SECTION_FLAGS = [("HEALTH", "PUBLIC"), ("EVENTS", "LOG"), ("ALERTS", "EMAIL")]
SECTION_FLAGS += [("ALERTS", "WEBHOOK_CRITICAL_ONLY")]


@pytest.mark.parametrize(
    ("section", "key", "value", "id_"),
    [(*where, bad, id_) for where in SECTION_SECONDS + SECTION_COUNTS for bad, id_ in BAD_NUMBERS]
    + [(*where, bad, id_) for where in SECTION_INTEGERS for bad, id_ in BAD_INTEGERS],
    ids=param_id,
)
def test_bad_number_in_a_merged_dict_is_one_error_of_its_kind(
    section: str, key: str, value: Any, id_: str
) -> None:
    messages = check(**{section: {key: value}})
    if value is None and section == "RETENTION" and key != "batch_size":
        assert messages == []  # keep forever
        return
    assert ids(messages) == [id_]
    assert messages[0].msg.startswith(f"TASKQUEUE[{section!r}][{key!r}] must be a")


def test_seconds_in_merged_dicts_are_bounded_too() -> None:
    for section, key in SECTION_SECONDS:
        assert ids(check(**{section: {key: 315_619_201}})) == [RANGE], (section, key)
    assert ids(check(METRICS={"MINUTES_KEPT": 5_260_321})) == [RANGE]
    assert ids(check(METRICS={"MINUTES_KEPT": 59})) == [RANGE]
    assert check(METRICS={"MINUTES_KEPT": 60}) == []


@pytest.mark.parametrize(("section", "key"), [*SECTION_FLAGS, ("TOP", "OUTBOUND_ALLOW_PRIVATE")])
@pytest.mark.parametrize("value", ["yes", 1, 0, None, NAN, [True]])
def test_flag_that_is_not_a_bool_is_e002(section: str, key: str, value: Any) -> None:
    if key not in DEFAULTS and section == "TOP":
        pytest.skip(f"{key} is not a setting yet")
    messages = check(**{key: value}) if section == "TOP" else check(**{section: {key: value}})
    assert ids(messages) == [TYPE]
    assert f"[{key!r}] must be True or False, got {value!r}." in messages[0].msg


@pytest.mark.parametrize(
    ("taskqueue", "id_"),
    [
        ({"POOL": "thread"}, CHOICE),
        ({"POOL": ["processes"]}, TYPE),
        ({"POOL": None}, TYPE),
        ({"EVENTS": {"STREAM": "debug"}}, CHOICE),
        ({"EVENTS": {"STREAM": 30}}, TYPE),
        ({"ALERTS": {"WEBHOOK_EVENTS": ["dead_lettered", "exploded"]}}, CHOICE),
        ({"ALERTS": {"WEBHOOK_EVENTS": [None]}}, TYPE),
        ({"ALERTS": {"WEBHOOK_EVENTS": {"dead_lettered": True}}}, TYPE),
        ({"ALERTS": {"WEBHOOK_URL": "ftp://example.com/x"}}, URL),
        ({"ALERTS": {"WEBHOOK_URL": "https://"}}, URL),
        ({"ALERTS": {"WEBHOOK_URL": "http://[::1/x"}}, URL),
        ({"ALERTS": {"WEBHOOK_URL": "https://example.com/a b"}}, URL),
        ({"ALERTS": {"WEBHOOK_URL": ["https://example.com"]}}, TYPE),
        ({"RETENTION": {"cron": ["*/15 * * * *"]}}, SCHEDULE),
        ({"RETENTION": {"cron": "*/15 * *"}}, SCHEDULE),
        ({"HEALTH": {"QUEUES": {"bad name": {}}}}, QUEUE_NAME),
        ({"HEALTH": {"QUEUES": {5: {}}}}, QUEUE_NAME),
        ({"HEALTH": {"QUEUES": {"emails": 50}}}, TYPE),
        ({"HEALTH": {"QUEUES": {"emails": {"MAX_PENDING": INF}}}}, FINITE),
        ({"HEALTH": {"QUEUES": {"emails": {"MAX_OLDEST_PENDING": 0}}}}, RANGE),
        ({"HEALTH": {"QUEUES": ["emails"]}}, TYPE),
        ({"METRICS": {5: 1}}, UNKNOWN),
        ({"SCHEDULES": {"n": {"task": "noop", "cron": "* * * * *", "grace": HUGE}}}, SCHEDULE),
    ],
    ids=param_id,
)
def test_each_kind_of_problem_has_its_id(taskqueue: dict[str, Any], id_: str) -> None:
    assert ids(check(**taskqueue)) == [id_]


def test_unknown_settings_of_any_type_are_e001_with_the_closest_name() -> None:
    messages = check(STALLE_AFTER=60, **{"5": 1})
    assert ids(messages) == [UNKNOWN, UNKNOWN]
    assert messages[1].hint.startswith("Did you mean 'STALE_AFTER'? Known settings: ")
    with override_settings(TASKQUEUE={None: 1, 5: 2, ("a",): 3}):
        assert ids(check_settings()) == [UNKNOWN] * 3


@pytest.mark.parametrize("value", [None, NAN, "x", 5, ("a", "b")])
def test_taskqueue_of_any_other_type_is_e002(settings: Any, value: Any) -> None:
    settings.TASKQUEUE = value
    assert ids(check_settings()) == [TYPE]


TOKEN = "k9Vq2xLw7RtYp4Zs"  # 16 characters: long enough


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ("k9Vq2xLw7RtYp4ZsXX", [TYPE]),
        ({"main": TOKEN}, [TYPE]),
        ([TOKEN, "k9Vq2xLw"], [SHORT_TOKEN]),
        (["k9Vq2xLw", 12345678901234567890, TOKEN], [SHORT_TOKEN, TYPE]),
        ((TOKEN,), []),
    ],
    ids=param_id,
)
def test_monitoring_tokens_are_checked_and_never_shown(tokens: Any, expected: list[str]) -> None:
    messages = check(MONITORING_TOKENS=tokens)
    assert ids(messages) == expected
    text = " ".join(f"{m.msg} {m.hint}" for m in messages)
    for secret in ("k9Vq2xLw", "12345678901234567890", "main"):
        assert secret not in text


def test_webhook_url_path_is_never_shown() -> None:
    messages = check(ALERTS={"WEBHOOK_URL": "hooks.example.com/services/T0/B0/s3cr3t"})
    assert ids(messages) == [URL]
    assert "'hooks.example.com/...'" in messages[0].msg
    assert "s3cr3t" not in messages[0].msg
    messages = check(ALERTS={"WEBHOOK_URL": "ftp://user:pw@hooks.example.com/s3cr3t"})
    assert "'ftp://hooks.example.com/...'" in messages[0].msg
    assert "s3cr3t" not in messages[0].msg and "pw" not in messages[0].msg


@pytest.mark.parametrize(
    ("hosts", "id_"),
    [("hc-ping.com", TYPE), (["hc-ping.com", 5], TYPE), (["https://hc-ping.com/x"], URL)],
)
def test_heartbeat_hosts_are_checked(hosts: Any, id_: str) -> None:
    if "HEARTBEAT_HOSTS" not in DEFAULTS:
        pytest.skip("HEARTBEAT_HOSTS is not a setting yet")
    assert check(HEARTBEAT_HOSTS=["hc-ping.com", "*.example.com"]) == []
    assert ids(check(HEARTBEAT_HOSTS=hosts)) == [id_]


def test_a_value_shown_in_a_message_is_bounded_and_safe() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    [message] = check(CONCURRENCY=Unprintable())
    assert (
        message.msg
        == "TASKQUEUE['CONCURRENCY'] must be a positive integer, got an Unprintable object."
    )
    [message] = check(POOL="x" * 10_000)
    assert len(message.msg) < 300
    assert message.msg.endswith("xxx....")
    [message] = check(POOL="\x00\ud800")
    message.msg.encode("utf-8")  # printable: NUL and the lone surrogate are escaped
