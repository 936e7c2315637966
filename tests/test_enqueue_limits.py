"""Enqueue refuses every value it cannot store, before any SQL, naming the key path or option;
values just inside the limits are stored and read back unchanged; ``enqueue_many`` stores
large inputs in batches that leave room for other writers."""

from __future__ import annotations

import datetime as dt
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connections, transaction
from django.test import override_settings
from django.utils import timezone

import taskqueue
from taskqueue import signals
from taskqueue.core.limits import MAX_DELAY, MAX_DELAY_SECONDS
from taskqueue.core.payloads import encoded_size
from taskqueue.core.registry import validate_max_attempts, validate_timeout
from taskqueue.exceptions import (
    InvalidPayload,
    InvalidTaskOption,
    PayloadTooLarge,
    UnknownTaskType,
)
from taskqueue.models import Task, TaskDependency, TaskStatus
from taskqueue.store import bulk_enqueue
from tests.factories import UserFactory, database_now

pytestmark = pytest.mark.django_db

HUGE = 10**5000
PLUS_FIVE = dt.timezone(timedelta(hours=5))
# Messages stay readable whatever the caller passed (no 5,000-digit number, no 1 MB repr).
LONGEST_MESSAGE = 600


def nested(levels: int) -> Any:
    """``levels`` lists inside each other, the innermost empty."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


# (id, build the request (task_type, payload, options), exception, fragment of the message)
Case = tuple[Callable[[], tuple[Any, Any, dict[str, Any]]], type[Exception], str]
BAD_REQUESTS: dict[str, Case] = {
    "huge-int": (
        lambda: ("echo", {"value": HUGE}, {}),
        InvalidPayload,
        "payload['value'] is an integer of 16610 bits, outside the 64-bit range",
    ),
    "int-2**63": (
        lambda: ("echo", {"value": {"n": 2**63}}, {}),
        InvalidPayload,
        "payload['value']['n'] is an integer of 64 bits",
    ),
    "int-below-64-bit": (
        lambda: ("echo", {"value": [-(2**63) - 1]}, {}),
        InvalidPayload,
        "payload['value'][0] is an integer of 64 bits",
    ),
    "nesting-10000": (
        lambda: ("echo", {"value": nested(10_000)}, {}),
        InvalidPayload,
        "[0] is nested more than 100 lists and objects deep",
    ),
    "nul-in-value": (
        lambda: ("echo", {"value": "a\x00b"}, {}),
        InvalidPayload,
        "payload['value'] contains a NUL character (\\x00) at position 1",
    ),
    "nul-in-key": (
        lambda: ("echo", {"value": {"a\x00": 1}}, {}),
        InvalidPayload,
        "payload['value'] has a key 'a\\x00' that contains a NUL character",
    ),
    "surrogate-in-value": (
        lambda: ("echo", {"value": ["ok", "\ud800"]}, {}),
        InvalidPayload,
        "payload['value'][1] contains a lone surrogate (\\ud800) at position 0",
    ),
    "surrogate-in-key": (
        lambda: ("echo", {"value": {"x\udfff": 1}}, {}),
        InvalidPayload,
        "payload['value'] has a key 'x\\udfff' that contains a lone surrogate",
    ),
    "inf-in-payload": (
        lambda: ("echo", {"value": {"f": float("inf")}}, {}),
        InvalidPayload,
        "payload['value']['f'] is inf, which JSON cannot represent",
    ),
    "mapping-not-dict": (
        lambda: ("echo", {"value": types.MappingProxyType({"a": 1})}, {}),
        InvalidPayload,
        "payload['value'] is a builtins.mappingproxy, which is not JSON serialisable",
    ),
    "metadata-nul": (
        lambda: ("noop", None, {"metadata": {"note": "\x00"}}),
        InvalidPayload,
        "metadata['note'] contains a NUL character",
    ),
    "metadata-huge-int": (
        lambda: ("noop", None, {"metadata": {"ids": [1, HUGE]}}),
        InvalidPayload,
        "metadata['ids'][1] is an integer of 16610 bits",
    ),
    "metadata-nesting": (
        lambda: ("noop", None, {"metadata": {"tree": nested(10_000)}}),
        InvalidPayload,
        "is nested more than 100 lists and objects deep",
    ),
    "metadata-surrogate-key": (
        lambda: ("noop", None, {"metadata": {"\ud83d": 1}}),
        InvalidPayload,
        "metadata has a key '\\ud83d' that contains a lone surrogate",
    ),
    "key-nul": (
        lambda: ("noop", None, {"idempotency_key": "order\x0042"}),
        InvalidTaskOption,
        "idempotency_key 'order\\x0042' contains a NUL character or a lone surrogate",
    ),
    "key-surrogate": (
        lambda: ("noop", None, {"idempotency_key": "\udc80"}),
        InvalidTaskOption,
        "idempotency_key '\\udc80' contains a NUL character or a lone surrogate",
    ),
    "key-too-long": (
        lambda: ("noop", None, {"idempotency_key": "k" * 100_000}),
        InvalidTaskOption,
        "idempotency_key must be a string of 1 to 255 characters: 'kkkk",
    ),
    "delay-nan": (
        lambda: ("noop", None, {"delay": float("nan")}),
        InvalidTaskOption,
        "delay is NaN",
    ),
    "delay-inf": (
        lambda: ("noop", None, {"delay": float("inf")}),
        InvalidTaskOption,
        "delay is infinite, over the maximum of 10 years (315,619,200 s)",
    ),
    "delay-minus-inf": (
        lambda: ("noop", None, {"delay": float("-inf")}),
        InvalidTaskOption,
        "delay must not be negative, got -inf",
    ),
    "delay-1e20": (
        lambda: ("noop", None, {"delay": 1e20}),
        InvalidTaskOption,
        "delay is 1e+20 s, over the maximum of 10 years",
    ),
    "delay-huge-int": (
        lambda: ("noop", None, {"delay": HUGE}),
        InvalidTaskOption,
        "delay is an integer of 16610 bits, over the maximum",
    ),
    "delay-timedelta-max": (
        lambda: ("noop", None, {"delay": timedelta.max}),
        InvalidTaskOption,
        "delay is 8.64e+13 s, over the maximum of 10 years",
    ),
    "run-at-max": (
        lambda: ("noop", None, {"run_at": dt.datetime.max.replace(tzinfo=dt.UTC)}),
        InvalidTaskOption,
        "run_at 9999-12-31T23:59:59.999999+00:00 is more than 10 years (315,619,200 s) ahead",
    ),
    "run-at-before-year-1-in-utc": (
        lambda: ("noop", None, {"run_at": dt.datetime.min.replace(tzinfo=PLUS_FIVE)}),
        InvalidTaskOption,
        "run_at 0001-01-01T00:00:00+05:00 is out of the range of storable times",
    ),
    "max-attempts-2**40": (
        lambda: ("noop", None, {"max_attempts": 2**40}),
        InvalidTaskOption,
        "max_attempts must be at most 1000, got 1099511627776",
    ),
    "max-attempts-1001": (
        lambda: ("noop", None, {"max_attempts": 1001}),
        InvalidTaskOption,
        "max_attempts must be at most 1000, got 1001",
    ),
    "max-attempts-huge": (
        lambda: ("noop", None, {"max_attempts": -HUGE}),
        InvalidTaskOption,
        "max_attempts must be a positive integer, got <int of 16610 bits>",
    ),
    "priority-huge": (
        lambda: ("noop", None, {"priority": HUGE}),
        InvalidTaskOption,
        "priority <int of 16610 bits> is out of range -100..100",
    ),
    "queue-trailing-newline": (
        lambda: ("noop", None, {"queue": "default\n"}),
        InvalidTaskOption,
        "invalid queue name 'default\\n'",
    ),
    "queue-nul": (
        lambda: ("noop", None, {"queue": "q\x00"}),
        InvalidTaskOption,
        "invalid queue name 'q\\x00'",
    ),
    "task-type-not-a-string": (
        lambda: (["noop"], None, {}),
        UnknownTaskType,
        "a task type is a registered handler's name (a string), got ['noop']",
    ),
    "task-type-huge": (
        lambda: ("t" * 1_000_000, None, {}),
        UnknownTaskType,
        "(names are at most 200 characters)",
    ),
    "created-by-not-a-user": (
        lambda: ("noop", None, {"created_by": 5}),
        InvalidTaskOption,
        "created_by must be a user (auth.User, such as request.user) or None, got 5",
    ),
    "created-by-unsaved-user": (
        lambda: ("noop", None, {"created_by": User(username="ghost")}),
        InvalidTaskOption,
        "is a user not saved yet",
    ),
    "depends-on-nul": (
        lambda: ("noop", None, {"depends_on": ["\x00"]}),
        InvalidTaskOption,
        "depends_on: '\\x00' is not a task id (a UUID)",
    ),
    "depends-on-unknown": (
        lambda: ("noop", None, {"depends_on": [uuid.UUID(int=7)]}),
        InvalidTaskOption,
        "depends_on names unknown task(s): 00000000-0000-0000-0000-000000000007",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_enqueue_refuses_what_it_cannot_store(case: Case) -> None:
    build, error, fragment = case
    task_type, payload, options = build()
    with pytest.raises(Exception) as info:
        taskqueue.enqueue(task_type, payload, **options)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value)
    assert len(str(info.value)) < LONGEST_MESSAGE
    assert Task.objects.count() == 0


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_enqueue_many_names_the_item_and_stores_nothing(case: Case) -> None:
    build, error, fragment = case
    task_type, payload, options = build()
    items = [
        ("noop", {}),
        ("echo", {"value": 1}),
        {"task_type": task_type, "payload": payload, **options},
    ]
    with pytest.raises(Exception) as info:
        taskqueue.enqueue_many(items)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value).startswith("item 2: ")
    assert fragment in str(info.value)
    assert len(str(info.value)) < LONGEST_MESSAGE
    assert Task.objects.count() == 0


def test_a_bad_default_is_refused_for_the_first_item() -> None:
    with pytest.raises(InvalidTaskOption, match=r"^item 0: delay is NaN"):
        taskqueue.enqueue_many([("noop", {}), ("noop", {})], delay=float("nan"))
    assert Task.objects.count() == 0


# --- metadata cap ------------------------------------------------------------------------------


def test_metadata_has_the_payload_cap() -> None:
    at_cap = {"note": "x" * 90}
    assert encoded_size(at_cap) == 101
    with override_settings(TASKQUEUE={"MAX_PAYLOAD_BYTES": 101}):
        task = taskqueue.enqueue("noop", metadata=at_cap)
        with pytest.raises(PayloadTooLarge) as info:
            taskqueue.enqueue("noop", metadata={"note": "x" * 91})
        with pytest.raises(PayloadTooLarge, match=r"^item 1: metadata is 102 bytes"):
            taskqueue.enqueue_many(
                [("noop", {}), {"task_type": "noop", "metadata": {"note": "x" * 91}}]
            )
    assert str(info.value).startswith(
        "metadata is 102 bytes once encoded, over the 101-byte cap (TASKQUEUE['MAX_PAYLOAD_BYTES'])"
    )
    stored = Task.objects.get()
    assert (stored.id, stored.metadata) == (task.id, at_cap)


def test_workflow_metadata_has_the_cap_too() -> None:
    with override_settings(TASKQUEUE={"MAX_PAYLOAD_BYTES": 100}):
        with pytest.raises(PayloadTooLarge, match=r"^metadata is 102 bytes"):
            taskqueue.chain(taskqueue.step("noop")).enqueue(metadata={"note": "x" * 91})
        with pytest.raises(InvalidPayload, match=r"^metadata\['n'\] contains a NUL"):
            taskqueue.chain(taskqueue.step("noop")).enqueue(metadata={"n": "\x00"})
    assert Task.objects.count() == 0


# --- bounds: at the limit stored, just over refused -------------------------------------------


def test_delay_at_the_bound_is_stored_and_just_over_is_refused() -> None:
    for over in (MAX_DELAY + timedelta(seconds=1), MAX_DELAY_SECONDS + 1):
        with pytest.raises(InvalidTaskOption, match="over the maximum of 10 years"):
            taskqueue.enqueue("noop", delay=over)
    before = database_now()
    seconds = taskqueue.enqueue("noop", delay=MAX_DELAY_SECONDS)
    interval = taskqueue.enqueue("noop", delay=MAX_DELAY)
    after = database_now()
    for task in (seconds, interval):
        stored = Task.objects.get(id=task.id)
        assert stored.status == TaskStatus.SCHEDULED
        assert before + MAX_DELAY <= stored.run_at <= after + MAX_DELAY
        assert stored.run_at == task.run_at


def test_run_at_at_the_bound_is_stored_and_just_over_is_refused() -> None:
    with pytest.raises(InvalidTaskOption, match="is more than 10 years"):
        taskqueue.enqueue("noop", run_at=timezone.now() + MAX_DELAY + timedelta(seconds=1))
    # The check runs after this line: by then the bound is a little further away.
    at_bound = timezone.now() + MAX_DELAY
    in_paris = (timezone.now() + MAX_DELAY - timedelta(hours=1)).astimezone(
        dt.timezone(timedelta(hours=2))
    )
    tasks = [taskqueue.enqueue("noop", run_at=at_bound)]
    tasks += taskqueue.enqueue_many([{"task_type": "noop", "run_at": in_paris}])
    for task, run_at in zip(tasks, (at_bound, in_paris), strict=True):
        assert Task.objects.get(id=task.id).run_at == run_at


def test_max_attempts_1000_is_stored_and_1001_refused() -> None:
    with pytest.raises(InvalidTaskOption, match="at most 1000, got 1001"):
        taskqueue.enqueue("noop", max_attempts=1001)
    task = taskqueue.enqueue("noop", max_attempts=1000)
    many = taskqueue.enqueue_many([("noop", {})], max_attempts=1000)
    assert [Task.objects.get(id=t.id).max_attempts for t in [task, *many]] == [1000, 1000]


def test_handler_declarations_have_the_same_bounds() -> None:
    assert validate_max_attempts(1000) == 1000
    assert validate_timeout(MAX_DELAY_SECONDS) == MAX_DELAY_SECONDS
    for bad in (1001, 2**40, HUGE):
        with pytest.raises(InvalidTaskOption, match="max_attempts must be"):
            validate_max_attempts(bad)
    for bad, fragment in [
        (float("nan"), "timeout must be a positive number of seconds, got nan"),
        (float("inf"), "timeout is infinite, over the maximum of 10 years"),
        (1e20, "timeout is 1e+20 s, over the maximum"),
        (MAX_DELAY_SECONDS + 1, "over the maximum of 10 years"),
        (-HUGE, "got <int of 16610 bits>"),
    ]:
        with pytest.raises(InvalidTaskOption) as info:
            validate_timeout(bad)
        assert fragment in str(info.value)


def test_settings_defaults_are_checked_at_enqueue() -> None:
    with override_settings(TASKQUEUE={"MAX_ATTEMPTS": 5000}):
        with pytest.raises(InvalidTaskOption, match=r"TASKQUEUE\['MAX_ATTEMPTS'\] must be at most"):
            taskqueue.enqueue("noop")
    with override_settings(TASKQUEUE={"DEFAULT_TIMEOUT": float("inf")}):
        with pytest.raises(InvalidTaskOption, match=r"TASKQUEUE\['DEFAULT_TIMEOUT'\] is infinite"):
            taskqueue.enqueue_many([("noop", {})])
    assert Task.objects.count() == 0


# --- values just inside the limits round-trip ---------------------------------------------------

EDGE_PAYLOAD: dict[str, Any] = {
    "ints": [2**63 - 1, -(2**63), 0],
    "floats": [1.5, 1e-300, 2.0**53],
    # With the payload itself and "value", 100 lists and objects: the deepest allowed.
    "deep": nested(98),
    "text": "\ud7ff\ue000\uffff\U0001f600 é \\x00 \t\n",
    "clé ✓": None,
}


@pytest.mark.parametrize("via", ["enqueue", "enqueue_many"])
def test_values_just_inside_the_limits_round_trip(via: str) -> None:
    payload = {"value": EDGE_PAYLOAD}
    metadata = {"deep": nested(99), "big": 2**63 - 1}
    key = "é" * 255
    options = {"metadata": metadata, "idempotency_key": key, "priority": -100, "max_attempts": 1000}
    if via == "enqueue":
        task = taskqueue.enqueue("echo", payload, **options)
    else:
        (task,) = taskqueue.enqueue_many([{"task_type": "echo", "payload": payload, **options}])
    stored = Task.objects.get(id=task.id)
    assert stored.payload == payload
    assert stored.metadata == metadata
    assert (stored.idempotency_key, stored.priority, stored.max_attempts) == (key, -100, 1000)
    assert (task.payload, task.metadata) == (payload, metadata)


def test_one_level_more_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="is nested more than 100"):
        taskqueue.enqueue("echo", {"value": {**EDGE_PAYLOAD, "deep": nested(99)}})
    with pytest.raises(InvalidPayload, match="is nested more than 100"):
        taskqueue.enqueue("noop", metadata={"deep": nested(100)})


# --- batches --------------------------------------------------------------------------------------


@pytest.fixture
def batches_of_three(monkeypatch: pytest.MonkeyPatch) -> int:
    """Small batches, so a few items cross several batch boundaries."""
    monkeypatch.setattr(bulk_enqueue, "BATCH_SIZE", 3)
    return 3


@pytest.fixture
def enqueued_events() -> Iterator[list[Any]]:
    events: list[Any] = []

    def receiver(sender: Any, event: Any, **kwargs: Any) -> None:
        events.append(event)

    signals.task_enqueued.connect(receiver)
    yield events
    signals.task_enqueued.disconnect(receiver)


def test_batches_keep_order_idempotency_keys_and_dependencies(
    batches_of_three: int,
    enqueued_events: list[Any],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    upstream = taskqueue.enqueue("noop", queue="up")
    user = UserFactory(username="batcher")
    later = timezone.now() + timedelta(days=2)
    items: list[Any] = [
        {"task_type": "noop", "idempotency_key": "k"},
        {"task_type": "noop", "depends_on": [upstream]},
        ("echo", {"value": 2}),
        ("echo", {"value": 3}),
        {"task_type": "noop", "idempotency_key": "k"},  # second batch: the first item's task
        {"task_type": "echo", "payload": {"value": 5}, "delay": 60},
        {"task_type": "noop", "run_at": later},
        {"task_type": "noop", "depends_on": [upstream.id], "idempotency_key": "j"},
        ("echo", {"value": 8}),
        {"task_type": "noop", "idempotency_key": "j"},
    ]
    with django_capture_on_commit_callbacks(execute=True):
        single = taskqueue.enqueue("noop")
        tasks = taskqueue.enqueue_many(items, created_by=user)
    assert len(tasks) == 10
    assert (tasks[4].id, tasks[9].id) == (tasks[0].id, tasks[7].id)
    created = [t for i, t in enumerate(tasks) if i not in (4, 9)]
    stored = {t.id: t for t in Task.objects.exclude(id__in=[upstream.id, single.id])}
    assert set(stored) == {t.id for t in created}
    # Arrival order is item order, across batches too (the claim's last tie-break).
    arrivals = [stored[t.id].created_at for t in created]
    assert arrivals == sorted(arrivals) and len(set(arrivals)) == len(arrivals)
    assert [stored[t.id].status for t in created] == [
        "pending",
        "waiting",
        "pending",
        "pending",
        "scheduled",
        "scheduled",
        "waiting",
        "pending",
    ]
    assert stored[tasks[6].id].run_at == later
    assert {t.created_by_id for t in stored.values()} == {user.pk}
    assert set(TaskDependency.objects.values_list("task_id", "depends_on_id")) == {
        (tasks[1].id, upstream.id),
        (tasks[7].id, upstream.id),
    }
    assert Task.objects.get(id=upstream.id).has_dependents
    # Each created task announced once, in item order; the ones a key returned not at all.
    assert [e.task_id for e in enqueued_events] == [single.id] + [t.id for t in created]
    for task in created:
        assert task._state.adding is False
        assert Task.objects.get(id=task.id).payload == task.payload


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_stored_batches_stay_and_the_error_says_which(
    batches_of_three: int,
) -> None:
    user = UserFactory(username="leaves")

    def delete_the_user(sender: Any, event: Any, **kwargs: Any) -> None:
        # After the first batch has committed: the next batch names a user that is gone.
        User.objects.filter(pk=user.pk).delete()

    signals.task_enqueued.connect(delete_the_user)
    try:
        with pytest.raises(IntegrityError) as info:
            taskqueue.enqueue_many([("noop", {})] * 7, created_by=user)
    finally:
        signals.task_enqueued.disconnect(delete_the_user)
    assert Task.objects.count() == 3
    assert info.value.__notes__ == [
        "enqueue_many: items 0 to 2 were stored (committed in earlier batches); "
        "items 3 to 6 were not"
    ]


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_all_batches_commit_or_roll_back_together(
    batches_of_three: int, enqueued_events: list[Any]
) -> None:
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        taskqueue.enqueue_many([("noop", {})] * 7)
        assert Task.objects.count() == 7
        raise Rollback
    assert Task.objects.count() == 0
    assert enqueued_events == []
    with transaction.atomic():
        tasks = taskqueue.enqueue_many([("noop", {})] * 7)
        assert enqueued_events == []  # announced on commit only
    assert Task.objects.count() == 7
    assert [e.task_id for e in enqueued_events] == [t.id for t in tasks]


# Large enough that storing it takes a few seconds on SQLite.
LARGE_INPUT = 40_000
# A single enqueue waits at most this long for the batch being stored (one takes ~10-40 ms).
WRITE_BOUND = 1.0


@pytest.mark.django_db(transaction=True)
def test_other_writers_get_in_while_a_large_enqueue_many_runs() -> None:
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def store_large_input() -> None:
        try:
            items = (("echo", {"value": n}) for n in range(LARGE_INPUT))
            outcome["tasks"] = len(taskqueue.enqueue_many(items, queue="bulk"))
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's connections only
            finished.set()

    thread = threading.Thread(target=store_large_input)
    started = time.monotonic()
    thread.start()
    latencies: list[float] = []
    # Writes that went in after some batches were stored and before the last one was.
    between_batches = 0
    try:
        while not finished.is_set():
            before = time.monotonic()
            taskqueue.enqueue("noop", queue="other")
            latencies.append(time.monotonic() - before)
            if 0 < Task.objects.filter(queue="bulk").count() < LARGE_INPUT:
                between_batches += 1
            finished.wait(0.05)  # pacing between writes, not synchronisation
    finally:
        thread.join(timeout=120)
    elapsed = time.monotonic() - started
    assert "error" not in outcome, outcome
    assert outcome["tasks"] == LARGE_INPUT
    assert Task.objects.filter(queue="bulk").count() == LARGE_INPUT
    assert between_batches >= 3, (
        f"only {between_batches} of {len(latencies)} writes got in while enqueue_many was "
        f"storing its batches ({elapsed:.1f} s in all)"
    )
    assert max(latencies) < WRITE_BOUND, (
        f"a single enqueue waited {max(latencies):.2f} s while enqueue_many ran "
        f"({len(latencies)} writes in {elapsed:.1f} s)"
    )
