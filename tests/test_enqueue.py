"""``taskqueue.enqueue`` and ``enqueue_many``: validation, defaults, transactions, NOTIFY."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

import taskqueue
from taskqueue import signals
from taskqueue.core.registry import build_spec, registry
from taskqueue.core.retry import DEFAULT_STRATEGY
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import Task, TaskStatus
from tests.factories import UserFactory, database_now

pytestmark = pytest.mark.django_db

NAIVE = dt.datetime(2030, 1, 1, 12, 0)
LATER = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)

INVALID_ENQUEUES: list[tuple[str, dict[str, Any] | None, dict[str, Any], type, str]] = [
    ("nope", {}, {}, UnknownTaskType, "no handler is registered for task type 'nope'"),
    ("echo", [1], {}, InvalidPayload, "payload must be a dict of keyword arguments, got list"),
    (
        "echo",
        {"value": {"when": [dt.date(2024, 1, 1)]}},
        {},
        InvalidPayload,
        "payload['value']['when'][0] is a datetime.date",
    ),
    ("echo", {"value": float("nan")}, {}, InvalidPayload, "payload['value'] is nan"),
    ("add", {"a": 1}, {}, InvalidPayload, "missing a required argument: 'b'"),
    ("add", {"a": 1, "b": 2, "c": 3}, {}, InvalidPayload, "unexpected keyword argument 'c'"),
    ("noop", {"x": 1}, {}, InvalidPayload, "payload does not match handler 'noop'()"),
    ("with_context", {}, {}, InvalidPayload, "missing a required argument: 'label'"),
    ("noop", None, {"priority": "urgent"}, InvalidTaskOption, "unknown priority 'urgent'"),
    ("noop", None, {"priority": 101}, InvalidTaskOption, "priority 101 is out of range"),
    ("noop", None, {"priority": -101}, InvalidTaskOption, "priority -101 is out of range"),
    ("noop", None, {"priority": True}, InvalidTaskOption, "priority must be a name or an integer"),
    ("noop", None, {"priority": 2.5}, InvalidTaskOption, "priority must be a name or an integer"),
    ("noop", None, {"queue": "two words"}, InvalidTaskOption, "invalid queue name 'two words'"),
    ("noop", None, {"queue": ""}, InvalidTaskOption, "invalid queue name ''"),
    ("noop", None, {"queue": 3}, InvalidTaskOption, "invalid queue name 3"),
    ("noop", None, {"run_at": NAIVE}, InvalidTaskOption, "has no time zone"),
    ("noop", None, {"run_at": "2030-01-01"}, InvalidTaskOption, "run_at must be a datetime"),
    (
        "noop",
        None,
        {"run_at": LATER, "delay": 5},
        InvalidTaskOption,
        "pass either delay or run_at, not both",
    ),
    ("noop", None, {"delay": -1}, InvalidTaskOption, "delay must not be negative"),
    (
        "noop",
        None,
        {"delay": timedelta(seconds=-1)},
        InvalidTaskOption,
        "delay must not be negative",
    ),
    ("noop", None, {"delay": "5"}, InvalidTaskOption, "delay must be a timedelta or a number"),
    ("noop", None, {"delay": True}, InvalidTaskOption, "delay must be a timedelta or a number"),
    ("noop", None, {"max_attempts": 0}, InvalidTaskOption, "max_attempts must be a positive"),
    ("noop", None, {"max_attempts": True}, InvalidTaskOption, "max_attempts must be a positive"),
    ("noop", None, {"max_attempts": "3"}, InvalidTaskOption, "max_attempts must be a positive"),
    ("noop", None, {"metadata": [1]}, InvalidTaskOption, "metadata must be a dict, got list"),
    (
        "noop",
        None,
        {"metadata": {"order": {"at": object()}}},
        InvalidPayload,
        "metadata['order']['at'] is a builtins.object",
    ),
    ("noop", None, {"idempotency_key": ""}, InvalidTaskOption, "idempotency_key must be a string"),
    (
        "noop",
        None,
        {"idempotency_key": "k" * 256},
        InvalidTaskOption,
        "idempotency_key must be a string of 1 to 255 characters",
    ),
    ("noop", None, {"idempotency_key": 42}, InvalidTaskOption, "idempotency_key must be a string"),
    ("noop", None, {"retries": 3}, TypeError, "unknown enqueue option(s): retries"),
    ("noop", None, {"timeout": 3}, TypeError, "unknown enqueue option(s): timeout"),
]


@pytest.mark.parametrize(
    ("task_type", "payload", "options", "error", "fragment"),
    INVALID_ENQUEUES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(INVALID_ENQUEUES)],
)
def test_invalid_enqueue_raises_and_stores_nothing(
    task_type: str,
    payload: Any,
    options: dict[str, Any],
    error: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error) as info:
        taskqueue.enqueue(task_type, payload, **options)
    assert fragment in str(info.value)
    assert Task.objects.count() == 0


def test_payload_over_the_size_cap_is_rejected() -> None:
    with override_settings(TASKQUEUE={"MAX_PAYLOAD_BYTES": 100}):
        taskqueue.enqueue("echo", {"value": "x" * 80})
        with pytest.raises(taskqueue.PayloadTooLarge) as info:
            taskqueue.enqueue("echo", {"value": "x" * 100})
    assert "over the 100-byte cap" in str(info.value)
    assert Task.objects.count() == 1


def test_defaults_come_from_settings_when_the_handler_says_nothing() -> None:
    before = database_now()
    task = taskqueue.enqueue("noop")
    after = database_now()
    stored = Task.objects.get()
    assert stored.id == task.id
    assert (stored.task_type, stored.queue, stored.payload, stored.priority) == (
        "noop",
        "default",
        {},
        0,
    )
    assert (stored.status, stored.attempts, stored.max_attempts) == (TaskStatus.PENDING, 0, 3)
    assert stored.retry == DEFAULT_STRATEGY.to_dict()
    assert stored.timeout == 1800.0
    assert (stored.idempotency_key, stored.metadata, stored.created_by) == (None, {}, None)
    assert (stored.claimed_by, stored.lease_id, stored.started_at) == (None, None, None)
    assert stored.cancel_requested is False
    # Inside the test's transaction PostgreSQL's clock may stand at the statement, not later.
    assert before - timedelta(seconds=1) <= stored.run_at <= after
    assert task.run_at == stored.run_at


def test_settings_defaults_are_read_at_enqueue_time() -> None:
    with override_settings(TASKQUEUE={"MAX_ATTEMPTS": 9, "DEFAULT_TIMEOUT": 77}):
        task = taskqueue.enqueue("noop")
    stored = Task.objects.get(id=task.id)
    assert (stored.max_attempts, stored.timeout) == (9, 77.0)


def test_defaults_come_from_the_handler() -> None:
    strategy = taskqueue.Linear(base=1, step=2, max_delay=9)

    def mail(to: str) -> None:
        return None

    spec = build_spec(
        "mail", mail, queue="emails", priority="low", max_attempts=7, retry=strategy, timeout=12
    )
    with registry.override(spec), override_settings(TASKQUEUE={"MAX_ATTEMPTS": 9}):
        task = taskqueue.enqueue("mail", {"to": "a@example.com"})
    stored = Task.objects.get(id=task.id)
    assert (stored.queue, stored.priority, stored.max_attempts, stored.timeout) == (
        "emails",
        -50,
        7,
        12.0,
    )
    assert stored.retry == {"kind": "linear", "base": 1, "step": 2, "max_delay": 9}


def test_options_override_the_handler_defaults() -> None:
    task = taskqueue.enqueue("sleepy", {"seconds": 0}, queue="fast", priority=3, max_attempts=1)
    stored = Task.objects.get(id=task.id)
    assert (stored.queue, stored.priority, stored.max_attempts) == ("fast", 3, 1)
    assert registry.get("sleepy").queue == "slow"


@pytest.mark.parametrize(
    ("priority", "stored"),
    [
        ("critical", 100),
        ("high", 50),
        ("normal", 0),
        ("low", -50),
        (7, 7),
        (-100, -100),
        (100, 100),
    ],
)
def test_priorities_by_name_and_number(priority: str | int, stored: int) -> None:
    task = taskqueue.enqueue("noop", priority=priority)
    assert Task.objects.get(id=task.id).priority == stored


def test_handler_priority_applies_when_none_is_given() -> None:
    task = taskqueue.enqueue("add", {"a": 1, "b": 2})
    assert Task.objects.get(id=task.id).priority == 50


@pytest.mark.parametrize("delay", [timedelta(minutes=5), 300, 300.0])
def test_delay_schedules_on_the_database_clock(delay: timedelta | int | float) -> None:
    before = database_now()
    task = taskqueue.enqueue("noop", delay=delay)
    after = database_now()
    stored = Task.objects.get(id=task.id)
    assert stored.status == TaskStatus.SCHEDULED
    assert before + timedelta(seconds=300) <= stored.run_at <= after + timedelta(seconds=300)


def test_zero_delay_is_ready_at_once() -> None:
    task = taskqueue.enqueue("noop", delay=0)
    assert Task.objects.get(id=task.id).status == TaskStatus.PENDING


def test_run_at_is_stored_as_given() -> None:
    paris = dt.datetime(2030, 6, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris"))
    task = taskqueue.enqueue("noop", run_at=paris)
    stored = Task.objects.get(id=task.id)
    assert stored.status == TaskStatus.SCHEDULED
    assert stored.run_at == paris
    assert stored.run_at == dt.datetime(2030, 6, 1, 7, 30, tzinfo=dt.UTC)


def test_created_by_a_user_is_recorded() -> None:
    user = UserFactory()
    task = taskqueue.enqueue("noop", created_by=user)
    assert Task.objects.get(id=task.id).created_by_id == user.pk


def test_created_by_an_anonymous_user_is_stored_as_none() -> None:
    task = taskqueue.enqueue("noop", created_by=AnonymousUser())
    assert Task.objects.get(id=task.id).created_by_id is None


def test_metadata_is_stored() -> None:
    task = taskqueue.enqueue("noop", metadata={"order": 42, "tags": ["a", "b"]})
    assert Task.objects.get(id=task.id).metadata == {"order": 42, "tags": ["a", "b"]}


# --- enqueue_many --------------------------------------------------------------------------


def test_enqueue_many_with_tuples_and_dicts() -> None:
    run_at = timezone.now() + timedelta(days=1)
    tasks = taskqueue.enqueue_many(
        [
            ("add", {"a": 1, "b": 2}),
            {"task_type": "echo", "payload": {"value": "v"}, "queue": "other", "run_at": run_at},
            {"task_type": "noop"},
            ["echo", None],
        ]
    )
    assert [t.task_type for t in tasks] == ["add", "echo", "noop", "echo"]
    stored = {t.id: t for t in Task.objects.all()}
    assert set(stored) == {t.id for t in tasks}
    add, echo, noop, echo_none = (stored[t.id] for t in tasks)
    assert (add.payload, add.priority, add.queue, add.status) == (
        {"a": 1, "b": 2},
        50,
        "default",
        TaskStatus.PENDING,
    )
    assert (echo.payload, echo.queue, echo.status, echo.run_at) == (
        {"value": "v"},
        "other",
        TaskStatus.SCHEDULED,
        run_at,
    )
    assert (noop.payload, echo_none.payload) == ({}, {})


def test_enqueue_many_makes_every_pending_task_due_at_once_and_keeps_arrival_order() -> None:
    # A claim in the same millisecond as the enqueue must see every task of the batch: they
    # share one run_at, and their arrival order is kept by created_at alone.
    tasks = taskqueue.enqueue_many([("noop", {}) for _ in range(5)])
    stored = {t.id: t for t in Task.objects.all()}
    rows = [stored[t.id] for t in tasks]
    assert len({row.run_at for row in rows}) == 1
    assert rows[0].run_at <= rows[0].created_at
    created = [row.created_at for row in rows]
    assert created == sorted(created) and len(set(created)) == len(created)


def test_enqueue_many_defaults_apply_unless_an_item_overrides_them() -> None:
    before = database_now()
    tasks = taskqueue.enqueue_many(
        [("noop", {}), {"task_type": "noop", "priority": "critical"}],
        priority="low",
        delay=60,
        metadata={"batch": 1},
    )
    first, second = (Task.objects.get(id=t.id) for t in tasks)
    assert (first.priority, second.priority) == (-50, 100)
    for task in (first, second):
        assert task.status == TaskStatus.SCHEDULED
        assert task.metadata == {"batch": 1}
        assert task.run_at >= before + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("bad_item", "error", "fragment"),
    [
        (("add", {"a": 1}), InvalidPayload, "item 2: payload does not match handler 'add'"),
        (("nope", {}), UnknownTaskType, "item 2: no handler is registered for task type 'nope'"),
        ({"task_type": "noop", "priority": "x"}, InvalidTaskOption, "item 2: unknown priority"),
        ({"task_type": "noop", "bogus": 1}, TypeError, "item 2: unknown enqueue option(s): bogus"),
        ({"payload": {}}, InvalidTaskOption, "item 2 has no 'task_type'"),
        ("noop", InvalidTaskOption, "item 2 must be (task_type, payload) or a dict"),
        (("noop", {}, {}), InvalidTaskOption, "item 2 must be (task_type, payload) or a dict"),
    ],
)
def test_enqueue_many_with_one_invalid_item_stores_nothing(
    bad_item: Any, error: type[Exception], fragment: str
) -> None:
    items = [("noop", {}), ("add", {"a": 1, "b": 2}), bad_item, ("noop", {})]
    with pytest.raises(error) as info:
        taskqueue.enqueue_many(items)
    assert fragment in str(info.value)
    assert Task.objects.count() == 0


def test_enqueue_many_of_nothing_returns_an_empty_list() -> None:
    assert taskqueue.enqueue_many([]) == []
    assert Task.objects.count() == 0


def test_enqueue_many_accepts_a_generator() -> None:
    tasks = taskqueue.enqueue_many(("echo", {"value": n}) for n in range(3))
    assert sorted(
        t.payload["value"] for t in Task.objects.filter(id__in=[t.id for t in tasks])
    ) == [
        0,
        1,
        2,
    ]


def test_enqueue_many_honours_idempotency_keys() -> None:
    held = taskqueue.enqueue("noop", idempotency_key="held")
    tasks = taskqueue.enqueue_many(
        [
            {"task_type": "noop", "idempotency_key": "new"},
            {"task_type": "noop", "idempotency_key": "new"},
            {"task_type": "noop", "idempotency_key": "held"},
            ("noop", {}),
        ]
    )
    assert tasks[0].id == tasks[1].id
    assert tasks[2].id == held.id
    assert len({t.id for t in tasks}) == 3
    assert Task.objects.count() == 3
    assert Task.objects.filter(idempotency_key="new").count() == 1


# --- transactions --------------------------------------------------------------------------


class Rollback(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_enqueued_signal_is_sent_once_per_new_task_on_commit() -> None:
    events: list[Any] = []

    def receiver(sender: Any, event: Any, **kwargs: Any) -> None:
        events.append(event)

    signals.task_enqueued.connect(receiver)
    try:
        with pytest.raises(Rollback), transaction.atomic():
            taskqueue.enqueue("noop")
            taskqueue.enqueue_many([("noop", {})])
            raise Rollback
        assert events == []
        with transaction.atomic():
            first = taskqueue.enqueue("noop", idempotency_key="sig")
            assert events == []
        again = taskqueue.enqueue("noop", idempotency_key="sig")
        batch = taskqueue.enqueue_many(
            [("noop", {}), {"task_type": "noop", "idempotency_key": "b"}]
        )
    finally:
        signals.task_enqueued.disconnect(receiver)
    assert again.id == first.id
    assert [e.task_id for e in events] == [first.id, batch[0].id, batch[1].id]
    assert {(e.name, e.task_type, e.queue) for e in events} == {("enqueued", "noop", "default")}


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_a_rolled_back_transaction_leaves_no_task() -> None:
    with pytest.raises(Rollback), transaction.atomic():
        task = taskqueue.enqueue("noop")
        taskqueue.enqueue_many([("noop", {}), ("noop", {})])
        assert Task.objects.count() == 3
        raise Rollback
    assert not Task.objects.filter(id=task.id).exists()
    assert Task.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_a_committed_transaction_stores_the_task() -> None:
    with transaction.atomic():
        task = taskqueue.enqueue("noop")
    assert Task.objects.get().id == task.id


# --- NOTIFY on commit (PostgreSQL) ---------------------------------------------------------


@pytest.fixture
def listener(transactional_db: None) -> Iterator[psycopg.Connection]:
    """A separate connection listening on the taskqueue channel, as a worker would."""
    params = connection.settings_dict
    conn = psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        password=params["PASSWORD"] or None,
        host=params["HOST"],
        port=params["PORT"],
        autocommit=True,
    )
    conn.execute("LISTEN taskqueue")
    yield conn
    conn.close()


def notifications(conn: psycopg.Connection, seconds: float) -> list[tuple[str, str]]:
    """Collect what arrives on ``conn`` within ``seconds``."""
    return [(n.channel, n.payload) for n in conn.notifies(timeout=seconds)]


def wait_for_notifications(
    conn: psycopg.Connection, count: int = 1, deadline: float = 10.0
) -> list[tuple[str, str]]:
    """Wait until ``count`` notifications have arrived, failing after ``deadline`` seconds."""
    received: list[tuple[str, str]] = []
    end = time.monotonic() + deadline
    while len(received) < count:
        if time.monotonic() > end:
            raise AssertionError(f"got {received} within {deadline} s, expected {count}")
        # Drain each batch whole: leaving the generator early drops the rest of a packet.
        received += notifications(conn, 0.2)
    return received


@pytest.mark.postgres_only
def test_notify_is_delivered_on_commit_with_the_queue_name(listener: psycopg.Connection) -> None:
    with transaction.atomic():
        taskqueue.enqueue("sleepy", {"seconds": 0})
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
    assert wait_for_notifications(listener) == [("taskqueue", "slow")]
    # One statement, one queue: exactly one notification.
    assert notifications(listener, 0.3) == []


@pytest.mark.postgres_only
def test_enqueue_many_notifies_each_queue_once(listener: psycopg.Connection) -> None:
    taskqueue.enqueue_many([("noop", {}), ("noop", {}), ("sleepy", {"seconds": 0})])
    received = wait_for_notifications(listener, count=2)
    assert sorted(received) == [("taskqueue", "default"), ("taskqueue", "slow")]
    assert notifications(listener, 0.3) == []


@pytest.mark.postgres_only
def test_rolled_back_enqueue_sends_no_notify(listener: psycopg.Connection) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        taskqueue.enqueue("noop")
        raise Rollback
    assert notifications(listener, 0.5) == []
    # The listener works: a committed enqueue is heard.
    taskqueue.enqueue("noop")
    assert wait_for_notifications(listener) == [("taskqueue", "default")]


@pytest.mark.postgres_only
def test_scheduled_task_sends_no_notify(listener: psycopg.Connection) -> None:
    taskqueue.enqueue("noop", delay=timedelta(minutes=1))
    taskqueue.enqueue("noop", run_at=timezone.now() + timedelta(hours=1))
    assert notifications(listener, 0.5) == []
    taskqueue.enqueue("noop")
    assert wait_for_notifications(listener) == [("taskqueue", "default")]
