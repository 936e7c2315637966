"""The store's state changes: claim, complete, retry, dead-letter, release, cancel, triage."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser

import taskqueue
from taskqueue import store
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import AttemptOutcome, DeadLetter, Task, TaskAttempt, TaskStatus
from tests.factories import TaskFactory, UserFactory, claim, database_now, kill, past

pytestmark = pytest.mark.django_db

WORKER = "host:1:abc"


def ids(claimed: list[store.ClaimedTask]) -> list[uuid.UUID]:
    return [task.id for task in claimed]


# --- claim ---------------------------------------------------------------------------------


def test_claim_takes_due_tasks_in_priority_then_run_at_then_arrival_order() -> None:
    base = database_now()
    at = lambda minutes: base - timedelta(minutes=minutes)  # noqa: E731
    normal_old = TaskFactory(priority=0, run_at=at(10), created_at=at(10))
    high_recent = TaskFactory(priority=50, run_at=at(1), created_at=at(30))
    high_older = TaskFactory(priority=50, run_at=at(5), created_at=at(20))
    high_older_twin = TaskFactory(priority=50, run_at=at(5), created_at=at(19))
    low_oldest = TaskFactory(priority=-50, run_at=at(60), created_at=at(60))
    retrying = TaskFactory(priority=0, run_at=at(2), created_at=at(2), status="retrying")
    scheduled = TaskFactory(priority=0, run_at=at(3), created_at=at(40), status="scheduled")
    # None of these may be claimed.
    TaskFactory(priority=100, run_at=base + timedelta(hours=1), status="scheduled")
    TaskFactory(priority=100, run_at=base + timedelta(hours=1), status="retrying")
    TaskFactory(priority=100, run_at=at(1), queue="other")
    for status in ("running", "completed", "failed", "cancelled", "waiting"):
        TaskFactory(priority=100, run_at=at(1), status=status)

    order = []
    while claimed := store.claim_due_tasks(WORKER, ["default"], 1):
        order += ids(claimed)
    assert order == [
        high_older.id,
        high_older_twin.id,
        high_recent.id,
        normal_old.id,
        scheduled.id,
        retrying.id,
        low_oldest.id,
    ]


def test_a_batch_claim_takes_the_best_tasks_first() -> None:
    base = database_now()
    tasks = [
        TaskFactory(priority=p, run_at=base - timedelta(seconds=s))
        for p, s in ((0, 10), (100, 1), (-50, 99), (50, 5), (0, 20))
    ]
    claimed = store.claim_due_tasks(WORKER, ["default"], 3)
    # Within a batch the worker runs higher priorities first.
    assert [t.priority for t in claimed] == [100, 50, 0]
    assert set(ids(claimed)) == {tasks[1].id, tasks[3].id, tasks[4].id}


def test_claim_serves_several_queues() -> None:
    a = TaskFactory(queue="a", run_at=past())
    b = TaskFactory(queue="b", run_at=past())
    TaskFactory(queue="c", run_at=past())
    assert set(ids(store.claim_due_tasks(WORKER, ["a", "b"], 10))) == {a.id, b.id}


def test_claim_marks_the_task_running_and_counts_the_attempt() -> None:
    strategy = taskqueue.Fixed(3)
    task = TaskFactory(
        task_type="add",
        payload={"a": 1, "b": 2},
        priority=7,
        max_attempts=4,
        retry=strategy.to_dict(),
        timeout=9.5,
        attempts=1,
        run_at=past(),
        cancel_requested=True,
    )
    before = database_now()
    [claimed] = store.claim_due_tasks(WORKER, ["default"], 10)
    after = database_now()
    assert (claimed.id, claimed.task_type, claimed.queue, claimed.payload) == (
        task.id,
        "add",
        "default",
        {"a": 1, "b": 2},
    )
    assert (claimed.priority, claimed.attempts, claimed.max_attempts) == (7, 2, 4)
    assert (claimed.retry, claimed.timeout) == ({"kind": "fixed", "seconds": 3}, 9.5)
    assert isinstance(claimed.lease_id, uuid.UUID)
    row = Task.objects.get(id=task.id)
    assert (row.status, row.attempts, row.claimed_by, row.lease_id) == (
        TaskStatus.RUNNING,
        2,
        WORKER,
        claimed.lease_id,
    )
    assert row.cancel_requested is False
    assert before <= row.started_at <= after
    assert claimed.started_at == row.started_at


def test_two_claims_never_return_the_same_task() -> None:
    for _ in range(5):
        TaskFactory(run_at=past())
    first = store.claim_due_tasks("w1", ["default"], 3)
    second = store.claim_due_tasks("w2", ["default"], 10)
    assert len(first) == 3
    assert len(second) == 2
    assert set(ids(first)).isdisjoint(ids(second))
    assert first[0].lease_id != second[0].lease_id
    assert store.claim_due_tasks("w3", ["default"], 10) == []


@pytest.mark.parametrize(("queues", "limit"), [([], 10), (["default"], 0), (["default"], -1)])
def test_claim_with_nothing_to_ask_for_returns_nothing(queues: list[str], limit: int) -> None:
    task = TaskFactory(run_at=past())
    assert store.claim_due_tasks(WORKER, queues, limit) == []
    assert Task.objects.get(id=task.id).status == TaskStatus.PENDING


# --- complete ------------------------------------------------------------------------------


def test_complete_stores_the_result() -> None:
    task = TaskFactory(run_at=past())
    claimed = claim(task)
    assert store.complete_tasks([(claimed, {"rows": [1, 2]})]) == {task.id}
    row = Task.objects.get(id=task.id)
    assert (row.status, row.result, row.attempts) == (TaskStatus.COMPLETED, {"rows": [1, 2]}, 1)
    assert row.completed_at is not None
    assert row.completed_at >= row.started_at


def test_complete_a_batch_with_a_none_result() -> None:
    a, b = TaskFactory(run_at=past(2)), TaskFactory(run_at=past(1))
    claimed = store.claim_due_tasks(WORKER, ["default"], 2)
    done = store.complete_tasks([(claimed[0], None), (claimed[1], 5)])
    assert done == {a.id, b.id}
    results = dict(Task.objects.values_list("id", "result"))
    assert results == {claimed[0].id: None, claimed[1].id: 5}
    assert store.complete_tasks([]) == set()


def test_complete_with_a_stale_lease_changes_nothing() -> None:
    task = TaskFactory(run_at=past())
    stale = claim(task)
    assert store.release_tasks([stale]) == 1
    assert store.complete_tasks([(stale, "late")]) == set()
    row = Task.objects.get(id=task.id)
    assert (row.status, row.result, row.attempts) == (TaskStatus.PENDING, None, 0)

    # Claimed again by someone else: the old claim still cannot complete it.
    fresh = claim(task, worker_id="other")
    assert store.complete_tasks([(stale, "late")]) == set()
    row = Task.objects.get(id=task.id)
    assert (row.status, row.claimed_by, row.lease_id, row.result) == (
        TaskStatus.RUNNING,
        "other",
        fresh.lease_id,
        None,
    )
    assert store.complete_tasks([(fresh, "mine")]) == {task.id}


# --- retry, dead letter, release -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_later_waits_on_the_database_clock_and_logs_the_attempt() -> None:
    task = TaskFactory(run_at=past())
    claimed = claim(task)
    before = database_now()
    assert store.retry_later(
        claimed,
        worker_id=WORKER,
        delay=90,
        error_type="ValueError",
        error="bad value",
        traceback="Traceback: ValueError: bad value",
    )
    after = database_now()
    row = Task.objects.get(id=task.id)
    assert (row.status, row.last_error, row.claimed_by, row.attempts) == (
        TaskStatus.RETRYING,
        "bad value",
        None,
        1,
    )
    assert before + timedelta(seconds=90) <= row.run_at <= after + timedelta(seconds=90)
    attempt = TaskAttempt.objects.get(task_id=task.id)
    assert (attempt.number, attempt.worker_id, attempt.outcome) == (1, WORKER, "failed")
    assert (attempt.error_type, attempt.error, attempt.traceback) == (
        "ValueError",
        "bad value",
        "Traceback: ValueError: bad value",
    )
    assert attempt.started_at == claimed.started_at
    # Not due for 90 s: nothing to claim.
    assert store.claim_due_tasks(WORKER, ["default"], 10) == []


def test_retry_later_with_a_lost_claim_writes_nothing() -> None:
    task = TaskFactory(run_at=past())
    stale = claim(task)
    store.release_tasks([stale])
    ok = store.retry_later(stale, worker_id=WORKER, delay=1, error_type="E", error="e")
    assert ok is False
    assert Task.objects.get(id=task.id).status == TaskStatus.PENDING
    assert TaskAttempt.objects.count() == 0


def test_dead_letter_keeps_every_failed_attempt() -> None:
    task = TaskFactory(task_type="echo", queue="mail", run_at=past())
    dead = kill(task, errors=("first", "second", "third"))
    row = Task.objects.get(id=task.id)
    assert (row.status, row.last_error, row.attempts, row.claimed_by) == (
        TaskStatus.FAILED,
        "third",
        3,
        None,
    )
    assert row.completed_at is not None
    assert dead == DeadLetter.objects.get()
    assert (dead.task_id, dead.task_type, dead.queue, dead.attempts) == (task.id, "echo", "mail", 3)
    assert (dead.error_type, dead.error, dead.traceback) == (
        "ValueError",
        "third",
        "Traceback 3: ValueError: third",
    )
    assert (dead.reviewed, dead.resolved_at) == (False, None)
    history = dead.attempts_history
    assert [(h["attempt"], h["error"], h["traceback"]) for h in history] == [
        (1, "first", "Traceback 1: ValueError: first"),
        (2, "second", "Traceback 2: ValueError: second"),
        (3, "third", "Traceback 3: ValueError: third"),
    ]
    assert {(h["outcome"], h["worker"], h["error_type"]) for h in history} == {
        ("failed", "test-worker", "ValueError")
    }
    assert all(h["started_at"] and h["finished_at"] for h in history)


def test_dead_letter_records_a_timeout_outcome() -> None:
    task = TaskFactory(run_at=past())
    claimed = claim(task)
    dead = store.dead_letter(
        claimed,
        worker_id=WORKER,
        error_type="HandlerTimeout",
        error="timed out after 1 s",
        outcome=AttemptOutcome.TIMED_OUT,
    )
    assert dead is not None
    assert dead.attempts_history[0]["outcome"] == "timed_out"
    assert TaskAttempt.objects.get().outcome == AttemptOutcome.TIMED_OUT


def test_dead_letter_with_a_lost_claim_writes_nothing() -> None:
    task = TaskFactory(run_at=past())
    stale = claim(task)
    store.release_tasks([stale])
    assert store.dead_letter(stale, worker_id=WORKER, error_type="E", error="e") is None
    assert Task.objects.get(id=task.id).status == TaskStatus.PENDING
    assert (DeadLetter.objects.count(), TaskAttempt.objects.count()) == (0, 0)


def test_release_gives_the_attempt_back() -> None:
    task = TaskFactory(run_at=past(), attempts=2, max_attempts=3)
    claimed = claim(task)
    assert Task.objects.get(id=task.id).attempts == 3
    assert store.release_tasks([claimed]) == 1
    row = Task.objects.get(id=task.id)
    assert (row.status, row.attempts, row.claimed_by, row.lease_id, row.started_at) == (
        TaskStatus.PENDING,
        2,
        None,
        None,
        None,
    )
    assert store.release_tasks([claimed]) == 0
    assert Task.objects.get(id=task.id).attempts == 2
    assert ids(store.claim_due_tasks(WORKER, ["default"], 5)) == [task.id]


# --- cancel --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "scheduled", "retrying", "waiting"])
def test_cancel_before_start_cancels(status: str) -> None:
    task = TaskFactory(status=status)
    assert store.cancel(task, reason="not needed") is True
    row = Task.objects.get(id=task.id)
    assert (row.status, row.last_error, row.cancel_requested) == (
        TaskStatus.CANCELLED,
        "not needed",
        False,
    )
    assert row.completed_at is not None


@pytest.mark.parametrize("as_type", [Task, uuid.UUID, str])
def test_cancel_accepts_a_task_a_uuid_or_a_string(as_type: type) -> None:
    task = TaskFactory()
    ref = {Task: task, uuid.UUID: task.id, str: str(task.id)}[as_type]
    assert taskqueue.cancel(ref) is True
    assert Task.objects.get(id=task.id).status == TaskStatus.CANCELLED


def test_cancel_of_a_running_task_asks_it_to_stop() -> None:
    task = TaskFactory(run_at=past())
    claimed = claim(task)
    assert store.is_cancel_requested(task.id) is False
    assert store.cancel(task.id) is False
    row = Task.objects.get(id=task.id)
    assert (row.status, row.cancel_requested, row.lease_id) == (
        TaskStatus.RUNNING,
        True,
        claimed.lease_id,
    )
    assert store.is_cancel_requested(task.id) is True


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_of_a_finished_task_changes_nothing(status: str) -> None:
    task = TaskFactory(status=status, last_error="")
    assert store.cancel(task) is False
    row = Task.objects.get(id=task.id)
    assert (row.status, row.cancel_requested, row.last_error) == (status, False, "")


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234", 42])
def test_cancel_with_a_bad_id_raises(bad: object) -> None:
    with pytest.raises(InvalidTaskOption, match="is not a task id"):
        store.cancel(bad)  # type: ignore[arg-type]


def test_cancel_of_an_unknown_id_is_false() -> None:
    assert store.cancel(uuid.uuid4()) is False


def test_cancel_tasks_counts_what_was_cancelled() -> None:
    pending = TaskFactory()
    done = TaskFactory(status="completed")
    assert store.cancel_tasks([pending.id, done.id, uuid.uuid4()]) == 1


# --- requeue, delete, review ---------------------------------------------------------------


def test_requeue_dead_gives_a_fresh_attempt_budget() -> None:
    task = TaskFactory(run_at=past(), max_attempts=2)
    kill(task, errors=("one", "two"))
    result = store.requeue_dead([task.id])
    assert result == store.RequeueResult(requeued=1, skipped=[])
    row = Task.objects.get(id=task.id)
    assert (row.status, row.attempts, row.claimed_by, row.lease_id) == (
        TaskStatus.PENDING,
        0,
        None,
        None,
    )
    assert (row.started_at, row.completed_at) == (None, None)
    dead = DeadLetter.objects.get(task_id=task.id)
    assert dead.resolved_at is not None
    assert ids(store.claim_due_tasks(WORKER, ["default"], 5)) == [task.id]


def test_requeue_dead_ignores_tasks_that_are_not_dead() -> None:
    pending = TaskFactory()
    completed = TaskFactory(status="completed")
    result = store.requeue_dead([pending.id, completed.id, uuid.uuid4()])
    assert result == store.RequeueResult(requeued=0, skipped=[])
    assert Task.objects.get(id=completed.id).status == TaskStatus.COMPLETED


def test_requeue_dead_skips_a_task_whose_key_is_held_again() -> None:
    dead_task = TaskFactory(run_at=past(), idempotency_key="order-7")
    kill(dead_task)
    other_dead = TaskFactory(run_at=past(), idempotency_key="order-8")
    kill(other_dead)
    newer = taskqueue.enqueue("noop", idempotency_key="order-7")
    assert newer.id != dead_task.id

    result = store.requeue_dead([dead_task.id, other_dead.id])
    assert result == store.RequeueResult(requeued=1, skipped=[dead_task.id])
    assert Task.objects.get(id=dead_task.id).status == TaskStatus.FAILED
    assert DeadLetter.objects.get(task_id=dead_task.id).resolved_at is None
    assert Task.objects.get(id=other_dead.id).status == TaskStatus.PENDING
    assert DeadLetter.objects.get(task_id=other_dead.id).resolved_at is not None
    assert Task.objects.get(id=newer.id).status == TaskStatus.PENDING


def test_delete_keeps_running_tasks_and_removes_their_history() -> None:
    dead = TaskFactory(run_at=past(2))
    kill(dead, errors=("a", "b"))
    running = TaskFactory(run_at=past(1))
    retried = claim(running)
    store.retry_later(retried, worker_id=WORKER, delay=0, error_type="E", error="e")
    claim(running)
    pending = TaskFactory(run_at=past(3))
    completed = TaskFactory(status="completed")

    deleted = store.delete_tasks([pending.id, dead.id, running.id, completed.id, uuid.uuid4()])
    assert deleted == 3
    assert list(Task.objects.values_list("id", flat=True)) == [running.id]
    assert DeadLetter.objects.count() == 0
    assert list(TaskAttempt.objects.values_list("task_id", flat=True)) == [running.id]


def test_mark_reviewed_records_who_and_when() -> None:
    user = UserFactory()
    first = kill(TaskFactory(run_at=past(2)))
    second = kill(TaskFactory(run_at=past(1)))
    assert store.mark_reviewed([first.id], user, note="known flaky upstream") == 1
    first.refresh_from_db()
    assert (first.reviewed, first.reviewed_by_id, first.note) == (
        True,
        user.pk,
        "known flaky upstream",
    )
    assert first.reviewed_at is not None
    second.refresh_from_db()
    assert (second.reviewed, second.reviewed_by_id, second.reviewed_at) == (False, None, None)
    # Already reviewed: not changed again, note kept.
    assert store.mark_reviewed([first.id, second.id], AnonymousUser()) == 1
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.reviewed_by_id, first.note) == (user.pk, "known flaky upstream")
    assert (second.reviewed, second.reviewed_by_id, second.note) == (True, None, "")
