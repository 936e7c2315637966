"""Cancellation of claimed and running tasks: the store's fenced writes, the races between a
cancel and a completion or a failure, and real workers stopping cancelled handlers.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections, transaction

import taskqueue
from taskqueue import signals, store
from taskqueue.core.outcome import Outcome, OutcomeKind
from taskqueue.events import TaskEvent
from taskqueue.models import DeadLetter, Task, TaskAttempt, TaskStatus
from taskqueue.store.transitions import Transition
from taskqueue.worker import outcomes
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.factories import TaskFactory, claim, past
from tests.testapp.models import Counter, LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "test-worker"
FAILURE = {"worker_id": WORKER, "error_type": "ValueError", "error": "boom"}


def row(task: Any) -> Task:
    return Task.objects.get(id=task.id)


def claimed_task(**fields: Any) -> store.ClaimedTask:
    return claim(TaskFactory(run_at=past(), **fields))


# --- the store: a cancel never overwrites a completion, nor a completion a cancel ----------


def test_a_completion_after_a_cancel_request_wins() -> None:
    claimed = claimed_task()
    assert taskqueue.cancel(claimed.id) is False  # running: only asked to stop
    assert store.complete_tasks([(claimed, {"ok": True})]) == {claimed.id}
    done = row(claimed)
    assert (done.status, done.result, done.cancel_requested) == (
        TaskStatus.COMPLETED,
        {"ok": True},
        True,
    )
    assert taskqueue.cancel(claimed.id) is False  # finished: nothing changes
    assert row(claimed).status == TaskStatus.COMPLETED


def test_a_completion_after_the_cancel_is_recorded_is_dropped() -> None:
    claimed = claimed_task()
    taskqueue.cancel(claimed.id)
    assert store.cancel_claimed(claimed, reason="stopped after the grace") is True
    cancelled = row(claimed)
    assert (cancelled.status, cancelled.last_error, cancelled.claimed_by) == (
        TaskStatus.CANCELLED,
        "stopped after the grace",
        None,
    )
    assert cancelled.completed_at is not None
    assert store.complete_tasks([(claimed, 1)]) == set()
    with transaction.atomic():
        assert store.complete_one(claimed, 1) is False  # an atomic handler's completion
    assert row(claimed).status == TaskStatus.CANCELLED
    assert row(claimed).result is None


def test_a_task_cancelled_while_running_cancels_its_waiting_dependents() -> None:
    upstream = taskqueue.enqueue("noop", queue="flow")
    claimed = claim(upstream)
    dependent = taskqueue.enqueue("noop", queue="flow", depends_on=[upstream])
    assert row(dependent).status == TaskStatus.WAITING
    taskqueue.cancel(upstream)
    assert store.cancel_claimed(claimed, reason="stopped after the grace") is True
    assert row(dependent).status == TaskStatus.CANCELLED
    assert row(dependent).last_error == (
        f"upstream task {upstream.id} (noop) was cancelled: stopped after the grace"
    )


def test_recording_a_cancel_needs_the_claim() -> None:
    task = TaskFactory(run_at=past())
    first = claim(task)
    assert store.retry_later(first, delay=0, **FAILURE)
    second = claim(task)
    assert store.cancel_claimed(first, reason="too late") is False
    current = row(task)
    assert (current.status, current.lease_id) == (TaskStatus.RUNNING, second.lease_id)


@pytest.mark.parametrize("dead", [True, False], ids=["dead", "retry"])
def test_a_failure_after_a_cancel_request_ends_cancelled(dead: bool) -> None:
    claimed = claimed_task()
    taskqueue.cancel(claimed.id)
    status = store.fail_attempt(claimed, dead=dead, cancel_reason="cancelled: it raised", **FAILURE)
    assert status == TaskStatus.CANCELLED
    cancelled = row(claimed)
    assert (cancelled.status, cancelled.last_error) == (
        TaskStatus.CANCELLED,
        "cancelled: it raised",
    )
    # Not a failure: no dead letter, no failed attempt for the circuit breaker to count.
    assert not DeadLetter.objects.filter(task_id=claimed.id).exists()
    assert not TaskAttempt.objects.filter(task_id=claimed.id).exists()


@pytest.mark.parametrize(
    ("dead", "status"), [(True, TaskStatus.FAILED), (False, TaskStatus.RETRYING)]
)
def test_a_failure_without_a_cancel_request_is_an_ordinary_failure(dead: bool, status: str) -> None:
    claimed = claimed_task()
    assert store.fail_attempt(claimed, dead=dead, **FAILURE) == status
    assert row(claimed).status == status
    assert DeadLetter.objects.filter(task_id=claimed.id).exists() is dead
    assert store.fail_attempt(claimed, dead=dead, **FAILURE) is None  # the claim is gone


def test_shutdown_cancels_a_task_with_a_request_instead_of_handing_it_back() -> None:
    flagged, quiet = claimed_task(), claimed_task()
    taskqueue.cancel(flagged.id)
    assert store.release_tasks([flagged, quiet]) == 1
    cancelled = row(flagged)
    assert (cancelled.status, cancelled.claimed_by) == (TaskStatus.CANCELLED, None)
    assert "worker shut down" in cancelled.last_error
    assert (row(quiet).status, row(quiet).attempts) == (TaskStatus.PENDING, 0)


def test_cancel_requested_among_names_only_flagged_running_tasks() -> None:
    flagged, quiet = claimed_task(), claimed_task()
    pending = TaskFactory()
    taskqueue.cancel(flagged.id)
    ids = [flagged.id, quiet.id, pending.id]
    assert store.cancel_requested_among(ids) == {flagged.id}


# --- the races, with real concurrency ------------------------------------------------------


def race(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two calls at the same moment in two threads (each with its own connection)."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results[0], results[1]


def test_a_cancel_racing_a_failed_attempt_always_ends_cancelled() -> None:
    """Whichever lands first: a flag read under lock, or a retrying task cancelled outright."""
    for _ in range(20):
        claimed = claimed_task(retry={"kind": "fixed", "delay": 0})
        status, _ = race(
            lambda c=claimed: store.fail_attempt(c, dead=False, **FAILURE),
            lambda c=claimed: taskqueue.cancel(c.id),
        )
        assert status in (TaskStatus.CANCELLED, TaskStatus.RETRYING)
        assert row(claimed).status == TaskStatus.CANCELLED, status


def test_a_cancel_racing_a_completion_never_undoes_it() -> None:
    for n in range(20):
        claimed = claimed_task()
        done, was_cancelled = race(
            lambda c=claimed, n=n: store.complete_tasks([(c, n)]),
            lambda c=claimed: taskqueue.cancel(c.id),
        )
        assert done == {claimed.id}
        assert was_cancelled is False
        assert (row(claimed).status, row(claimed).result) == (TaskStatus.COMPLETED, n)


# --- recording and announcing a cancelled outcome (the worker's main thread) ----------------


def recorded(item: outcomes.Finished) -> tuple[list[Transition], list[TaskEvent]]:
    """Record one finished task as the worker does; return what was written and announced."""
    events: list[TaskEvent] = []

    def receiver(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
        events.append(event)

    for sig in (signals.task_cancelled, signals.task_failed, signals.task_retry_scheduled):
        sig.connect(receiver, weak=False)
    try:
        written: list[Transition] = []
        dropped: list[Transition] = []
        outcomes.record([item], written, dropped, WORKER)
        assert not dropped
        for finished in written:
            store.announce(finished)
    finally:
        for sig in (signals.task_cancelled, signals.task_failed, signals.task_retry_scheduled):
            sig.disconnect(receiver)
    return written, events


def test_a_retry_raised_after_a_cancel_request_is_announced_as_cancelled() -> None:
    claimed = claimed_task()
    taskqueue.cancel(claimed.id)
    outcome = Outcome(
        OutcomeKind.RETRY, 0.5, error_type="taskqueue.exceptions.Retry", error="asked to stop"
    )
    written, events = recorded(outcomes.Finished(claimed, outcome, None))
    assert [transition.status for transition in written] == [TaskStatus.CANCELLED]
    reason = (
        "cancelled while running: after the cancel request the handler ended with "
        "taskqueue.exceptions.Retry: asked to stop"
    )
    assert [(e.name, e.message, e.task_id) for e in events] == [("cancelled", reason, claimed.id)]
    assert (row(claimed).status, row(claimed).last_error) == (TaskStatus.CANCELLED, reason)


def test_a_stopped_task_is_recorded_cancelled_and_announced() -> None:
    claimed = claimed_task()
    taskqueue.cancel(claimed.id)
    outcome = Outcome(
        OutcomeKind.CANCELLED, 2.0, error_type="Cancelled", error="stopped after the grace"
    )
    written, events = recorded(outcomes.Finished(claimed, outcome, None))
    assert len(written) == 1
    assert [(e.name, e.message, e.duration) for e in events] == [
        ("cancelled", "stopped after the grace", 2.0)
    ]
    assert row(claimed).status == TaskStatus.CANCELLED


def test_a_failure_without_a_cancel_request_is_announced_as_a_failure() -> None:
    claimed = claimed_task()
    outcome = Outcome(OutcomeKind.DEAD, 0.1, error_type="ValueError", error="boom")
    _, events = recorded(outcomes.Finished(claimed, outcome, None))
    assert [e.name for e in events] == ["failed"]
    assert row(claimed).status == TaskStatus.FAILED


# --- real workers --------------------------------------------------------------------------


def started(key: str) -> bool:
    return Counter.objects.filter(key=key).exists()


def status_of(task: Task) -> str:
    return row(task).status


def enqueue_await(key: str, then: str, seconds: float = 60, **options: Any) -> Task:
    return taskqueue.enqueue(
        "await_cancel", {"key": key, "then": then, "seconds": seconds}, **options
    )


def test_handlers_that_see_the_request_end_cancelled_or_completed(start_worker) -> None:
    raises = enqueue_await("raises", "raise")
    retries = enqueue_await("retries", "retry")
    returns = enqueue_await("returns", "return")
    worker = start_worker("--queues", "cancel", "--concurrency", "3")
    with worker_stderr_on_failure(worker):
        for key in ("raises", "retries", "returns"):
            wait_for(lambda key=key: started(key), timeout=30, message=f"handler {key} to start")
        asked_at = time.monotonic()
        assert [taskqueue.cancel(task) for task in (raises, retries, returns)] == [False] * 3
        for task in (raises, retries, returns):
            wait_for(lambda task=task: row(task).is_finished, timeout=15, message="tasks to end")
        # The handlers stopped on their own, well before the 10 s grace.
        assert time.monotonic() - asked_at < 8
        assert worker.poll() is None
    for task in (raises, retries):
        ended = row(task)
        assert (ended.status, ended.attempts, ended.claimed_by) == (TaskStatus.CANCELLED, 1, None)
        assert ended.last_error.startswith("cancelled while running"), ended.last_error
        assert not DeadLetter.objects.filter(task=task).exists()
    assert "RuntimeError: stopping: a cancel was requested" in row(raises).last_error
    assert "Retry: asked to stop" in row(retries).last_error
    # Returning is finishing: the cancel was only a request, and completion wins.
    assert (row(returns).status, row(returns).result) == (TaskStatus.COMPLETED, "stopped early")
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output


def test_a_prefetched_task_is_withdrawn_and_a_deaf_handler_is_stopped_after_the_grace(
    start_worker,
) -> None:
    # Concurrency 1 claims two: the high-priority task runs, the other waits in the worker.
    running = enqueue_await("deaf", "ignore", priority="high")
    prefetched = enqueue_await("prefetched", "ignore", priority="low")
    worker = start_worker(
        "--queues",
        "cancel",
        "--concurrency",
        "1",
        extra_env={"TASKQUEUE_TEST_CANCEL_GRACE": "1"},
    )
    with worker_stderr_on_failure(worker):
        wait_for(lambda: started("deaf"), timeout=30, message="the handler to start")
        wait_for(lambda: status_of(prefetched) == TaskStatus.RUNNING, timeout=5, message="claim")

        assert taskqueue.cancel(prefetched) is False  # claimed, so running as far as it knows
        wait_for(
            lambda: status_of(prefetched) == TaskStatus.CANCELLED,
            timeout=5,
            message="the prefetched task to be withdrawn",
        )
        assert row(prefetched).last_error.startswith("cancelled before its handler started")
        assert status_of(running) == TaskStatus.RUNNING  # no request, no grace: untouched

        asked_at = time.monotonic()
        assert taskqueue.cancel(running) is False
        wait_for(
            lambda: status_of(running) == TaskStatus.CANCELLED,
            timeout=15,
            message="the deaf handler to be stopped",
        )
        assert time.monotonic() - asked_at >= 1.0  # not before the grace period
        assert "grace period (CANCEL_GRACE)" in row(running).last_error

        # The slot came back: the worker goes on with other work.
        after = taskqueue.enqueue("cancel_ledger", {"n": 7})
        wait_for(lambda: status_of(after) == TaskStatus.COMPLETED, timeout=30, message="more work")
        assert worker.poll() is None
    assert not started("prefetched"), "a cancelled task must never start"
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output
    assert "was stopped: its task was cancelled" in output


def test_the_thread_pool_cancels_async_handlers_and_lets_sync_ones_finish(start_worker) -> None:
    coroutine = taskqueue.enqueue("async_await_cancel", {"key": "async"})
    sync = enqueue_await("sync", "ignore", seconds=2)
    worker = start_worker(
        "--queues",
        "cancel",
        "--pool",
        "threads",
        extra_env={"TASKQUEUE_TEST_CANCEL_GRACE": "0.3"},
    )
    with worker_stderr_on_failure(worker):
        wait_for(lambda: started("async") and started("sync"), timeout=30, message="handlers")
        assert taskqueue.cancel(coroutine) is False
        assert taskqueue.cancel(sync) is False
        wait_for(lambda: status_of(coroutine) == TaskStatus.CANCELLED, timeout=10, message="async")
        assert "grace period" in row(coroutine).last_error
        # A thread cannot be killed: the sync handler runs to its end, and completes.
        wait_for(lambda: status_of(sync) == TaskStatus.COMPLETED, timeout=15, message="sync")
        assert row(sync).result == "ran to the end"
    worker.send_signal(signal.SIGTERM)
    code, _, output = finish_worker(worker)
    assert code == 0, output
    assert output.count("cannot be stopped; letting it finish") == 1, output


def test_cancelling_while_two_workers_claim_never_runs_a_cancelled_task(start_worker) -> None:
    tasks = taskqueue.enqueue_many(
        [("cancel_ledger", {"n": n, "work_ms": 5}) for n in range(200)], queue="cancel"
    )
    workers = [start_worker("--queues", "cancel") for _ in range(2)]
    with worker_stderr_on_failure(*workers):
        wait_for(lambda: LedgerEntry.objects.exists(), timeout=30, message="work to begin")
        order = list(tasks)
        random.Random(4).shuffle(order)
        answers = {task.id: taskqueue.cancel(task) for task in order}
        wait_for(
            lambda: not Task.objects.filter(id__in=answers).unfinished().exists(),
            timeout=60,
            message="every task to finish",
        )
    ran: dict[int, int] = {}
    for n in LedgerEntry.objects.values_list("n", flat=True):
        ran[n] = ran.get(n, 0) + 1
    rows = {t.id: t for t in Task.objects.filter(id__in=answers)}
    cancelled = completed = 0
    for task in tasks:
        ended, n = rows[task.id], task.payload["n"]
        if ended.status == TaskStatus.CANCELLED:
            cancelled += 1
            assert n not in ran, f"cancelled task {n} ran"
            assert ended.result is None
        else:
            completed += 1
            assert ended.status == TaskStatus.COMPLETED, ended.status
            assert answers[task.id] is False, "cancel said cancelled, but it completed"
            assert (ran.get(n), ended.result) == (1, n)
    assert cancelled + completed == 200
    assert cancelled > 0 and completed > 0, (cancelled, completed)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        code, _, output = finish_worker(worker)
        assert code == 0, output
