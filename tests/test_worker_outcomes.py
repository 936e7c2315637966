"""What a burst worker records for each way a handler can end: real ``run_worker`` runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now

import taskqueue
from taskqueue.models import AttemptOutcome, DeadLetter, Task, TaskAttempt, TaskStatus
from taskqueue.store.sql import db_now
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def refreshed(task: Task) -> Task:
    task.refresh_from_db()
    return task


def only_dead_letter(task: Task) -> DeadLetter:
    letters = list(DeadLetter.objects.filter(task=task))
    assert len(letters) == 1, f"expected one dead letter for {task}, found {letters}"
    return letters[0]


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def test_sync_handler_completes_with_its_result(run_worker):
    task = taskqueue.enqueue("add", {"a": 2, "b": 40})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.result, task.attempts) == (TaskStatus.COMPLETED, 42, 1), result.stderr
    assert task.completed_at is not None
    assert not TaskAttempt.objects.filter(task=task).exists()


def test_async_handler_completes_with_its_result(run_worker):
    task = taskqueue.enqueue("async_add", {"a": 1, "b": 2})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, 3), result.stderr


def test_context_handler_stores_progress_and_sees_its_attempt(run_worker):
    task = taskqueue.enqueue("with_context", {"label": "report"})
    result = run_worker("--burst")
    task = refreshed(task)
    assert task.status == TaskStatus.COMPLETED, result.stderr
    assert task.progress == 1.0
    assert task.progress_message == "done"
    assert task.result == {"attempt": 1, "label": "report"}


def test_failing_handler_is_retried_until_it_succeeds(run_worker):
    task = taskqueue.enqueue("fails_then_succeeds", {"key": "flaky", "failures": 2})
    result = run_worker("--burst")
    task = refreshed(task)
    assert task.status == TaskStatus.COMPLETED, result.stderr
    assert task.attempts == 3
    assert task.result == "succeeded on attempt 3"
    assert Counter.objects.get(key="flaky").value == 3
    attempts = list(TaskAttempt.objects.filter(task=task).order_by("number"))
    assert [a.number for a in attempts] == [1, 2]
    assert [a.outcome for a in attempts] == [AttemptOutcome.FAILED] * 2
    assert [a.error for a in attempts] == ["failure 1 of 2", "failure 2 of 2"]
    assert all(a.error_type == "RuntimeError" for a in attempts)


def test_handler_that_always_fails_is_dead_lettered_with_its_history(run_worker):
    task = taskqueue.enqueue("always_fails", {})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 3), result.stderr
    assert task.last_error == "boom"
    letter = only_dead_letter(task)
    assert letter.task_type == "always_fails"
    assert (letter.error, letter.error_type, letter.attempts) == ("boom", "ValueError", 3)
    assert "always_fails" in letter.traceback
    assert "ValueError: boom" in letter.traceback
    assert [entry["attempt"] for entry in letter.attempts_history] == [1, 2, 3]
    assert all(entry["error"] == "boom" for entry in letter.attempts_history)
    assert not letter.reviewed


def test_permanent_error_dead_letters_on_the_first_attempt(run_worker):
    task = taskqueue.enqueue("permanent", {})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), result.stderr
    letter = only_dead_letter(task)
    assert letter.error_type.endswith("PermanentError")
    assert letter.error == "card declined"
    assert letter.attempts == 1


def test_retry_without_delay_dead_letters_once_attempts_are_used(run_worker):
    task = taskqueue.enqueue("asks_retry", {"delay": 0})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2), result.stderr
    letter = only_dead_letter(task)
    assert letter.attempts == 2
    assert "not ready" in letter.error
    assert "no attempts left" in letter.error and "2 of 2 used" in letter.error
    assert TaskAttempt.objects.filter(task=task).count() == 2


def test_retry_with_delay_waits_on_the_database_clock(run_worker):
    task = taskqueue.enqueue("asks_retry", {"delay": 60})
    before = db_now("default")
    result = run_worker("--burst")
    after = db_now("default")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.RETRYING, 1), result.stderr
    assert task.claimed_by is None
    assert abs(seconds(task.run_at - task.updated_at) - 60) < 1
    assert before + timedelta(seconds=59) <= task.run_at <= after + timedelta(seconds=61)
    assert not DeadLetter.objects.filter(task=task).exists()


def test_async_handler_past_its_timeout_is_stopped_and_dead_lettered(run_worker):
    task = taskqueue.enqueue("async_slow", {})
    result = run_worker("--burst", timeout=20)
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), result.stderr
    attempt = TaskAttempt.objects.get(task=task)
    assert attempt.outcome == AttemptOutcome.TIMED_OUT
    assert attempt.error_type == "TimeoutError"
    assert only_dead_letter(task).error_type == "TimeoutError"


def test_result_that_is_not_json_dead_letters_as_invalid_result(run_worker):
    task = taskqueue.enqueue("bad_result", {})
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), result.stderr
    assert only_dead_letter(task).error_type == "InvalidResult"
    assert task.result is None


def test_retry_delays_follow_the_handlers_strategy(run_worker):
    task = taskqueue.enqueue("linear_retry", {})
    expected_delays = [30, 40]
    for attempt, delay in enumerate(expected_delays, start=1):
        before = db_now("default")
        result = run_worker("--burst")
        after = db_now("default")
        task = refreshed(task)
        assert (task.status, task.attempts) == (TaskStatus.RETRYING, attempt), result.stderr
        assert abs(seconds(task.run_at - task.updated_at) - delay) < 1, (attempt, result.stderr)
        assert before + timedelta(seconds=delay) <= task.run_at <= after + timedelta(seconds=delay)
        # Test set-up: make the retry due now instead of waiting out the backoff.
        Task.objects.filter(id=task.id).update(run_at=Now())
    result = run_worker("--burst")
    task = refreshed(task)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 3), result.stderr
    assert only_dead_letter(task).attempts == 3


def test_poison_rows_are_dead_lettered_and_the_worker_carries_on(run_worker):
    # Written straight into the table, as a bad migration or a hand edit could: enqueue
    # would refuse every one of these.
    unknown = Task.objects.create(task_type="no_such_type", payload={})
    list_payload = Task.objects.create(task_type="add", payload=[1, 2])
    unbound = Task.objects.create(task_type="add", payload={"a": 1, "c": 2})
    good = taskqueue.enqueue("add", {"a": 1, "b": 1})

    result = run_worker("--burst")

    assert refreshed(good).status == TaskStatus.COMPLETED, result.stderr
    # A type this worker has no handler for is not claimed: it waits for a worker that has
    # one (tests/test_unserved_and_rescue.py).
    unknown = refreshed(unknown)
    assert (unknown.status, unknown.attempts) == (TaskStatus.PENDING, 0), result.stderr
    assert not DeadLetter.objects.filter(task=unknown).exists()
    expected = {
        list_payload: "InvalidPayload",
        unbound: "InvalidPayload",
    }
    for task, error_type in expected.items():
        task = refreshed(task)
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), (task, result.stderr)
        letter = only_dead_letter(task)
        assert (letter.error_type, letter.attempts) == (error_type, 1), letter.error
    assert "JSON list" in only_dead_letter(list_payload).error
    assert "does not match handler 'add'" in only_dead_letter(unbound).error
