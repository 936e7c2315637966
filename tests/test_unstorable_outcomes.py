"""Outcomes the database cannot store, with real ``run_worker`` processes.

A result, error or retry delay the database would refuse fails only its own task (with an
error naming why); the rest of the batch completes, the worker keeps claiming, and it exits
0 on SIGTERM. Database refusals are real: triggers installed by the tests. An unexpected
error in the claim loop drains, releases, closes the pool and exits 1, without hanging.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import connection

import taskqueue
from taskqueue import store
from taskqueue.core.limits import MAX_DELAY, MAX_DELAY_SECONDS
from taskqueue.core.outcome import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, OutcomeKind, recordable
from taskqueue.core.retry import (
    Exponential,
    Fixed,
    Linear,
    RetryStrategy,
    bounded_delay,
    next_delay,
)
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import DeadLetter, Task, TaskAttempt, TaskStatus, Worker, WorkerStatus
from taskqueue.store.salvage import UNRECORDABLE_ERROR
from taskqueue.store.sql import ClaimedTask, db_now
from taskqueue.worker.executor import AsyncRunner, execute
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.testapp.models import LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)

SHUTDOWN_TIMEOUT = 3.0
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)

# kind -> what the dead letter must say (handler "unstorable_result")
BAD_RESULTS = {
    "nul": "result['x'] contains a NUL character",
    "surrogate": "result['x'] contains a lone surrogate (\\ud800)",
    "huge_int": "result['x'] is an integer of 16610 bits",
    "nul_key": "result has a key 'a\\x00b' that contains a NUL character",
    "deep": "is nested more than 100 lists and objects deep",
}
# kind -> what the dead letter's error must contain (handler "unstorable_error")
BAD_ERRORS = {
    "nul": "bad \\x00 byte",
    "surrogate": "lone \\ud800 surrogate",
    "huge": "characters omitted",
    "long_type": "an error type of 300 characters",
    "unprintable": "<_UnprintableError: its message could not be read>",
}
# delay -> what the error of each attempt must say (handler "retry_unbounded"; every kind
# is checked in-process below)
BAD_DELAYS = {
    "inf": "Retry delay is infinite, over the maximum of 10 years",
    "nan": "Retry delay is NaN",
    "1e12": "Retry delay is 1e+12 s, over the maximum of 10 years",
}


def enqueue_bad_outcomes() -> dict[str, Task]:
    """One task per bad outcome, and twelve ordinary ones beside them (``ledger:n``)."""
    tasks: dict[str, Task] = {}
    for n in range(12):
        tasks[f"ledger:{n}"] = taskqueue.enqueue("ledger", {"n": n})
    for kind in BAD_RESULTS:
        tasks[f"result:{kind}"] = taskqueue.enqueue("unstorable_result", {"kind": kind})
    for kind in BAD_ERRORS:
        tasks[f"error:{kind}"] = taskqueue.enqueue("unstorable_error", {"kind": kind})
    for delay in BAD_DELAYS:
        tasks[f"delay:{delay}"] = taskqueue.enqueue("retry_unbounded", {"delay": delay})
    return tasks


def all_finished(tasks: dict[str, Task] | list[Task]) -> bool:
    ids = [task.id for task in (tasks.values() if isinstance(tasks, dict) else tasks)]
    return Task.objects.filter(id__in=ids).exclude(status__in=FINISHED).count() == 0


def dead_letter_of(task: Task) -> DeadLetter:
    letters = list(DeadLetter.objects.filter(task_id=task.id))
    assert len(letters) == 1, f"expected one dead letter for {task.task_type}, got {letters}"
    return letters[0]


def assert_every_row_reads_back_and_none_running() -> None:
    rows = list(Task.objects.all())  # psycopg raises on a run_at it cannot parse
    assert rows
    running = [(row.task_type, row.payload) for row in rows if row.status == TaskStatus.RUNNING]
    assert not running, f"left running: {running}"
    horizon = db_now(connection.alias) + MAX_DELAY
    assert all(row.run_at <= horizon for row in rows)


def assert_bad_outcomes_recorded(tasks: dict[str, Task]) -> None:
    """Each bad outcome ended in a dead letter naming why; the ordinary tasks ran once."""
    fresh = {key: Task.objects.get(id=task.id) for key, task in tasks.items()}
    for kind, fragment in BAD_RESULTS.items():
        task = fresh[f"result:{kind}"]
        # Not retried: the same handler would return the same value again.
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), kind
        letter = dead_letter_of(task)
        assert letter.error_type == "InvalidResult", kind
        assert "handler returned a result that cannot be stored" in letter.error, letter.error
        assert fragment in letter.error, (kind, letter.error)
        assert task.result is None
    for kind, fragment in BAD_ERRORS.items():
        task = fresh[f"error:{kind}"]
        assert task.status == TaskStatus.FAILED, kind
        letter = dead_letter_of(task)
        assert fragment in letter.error, (kind, letter.error[:300])
        assert fragment in task.last_error, kind
        assert len(letter.error) <= MAX_ERROR_CHARS, kind
        assert len(letter.traceback) <= MAX_TRACEBACK_CHARS, kind
        assert "\x00" not in letter.error + letter.traceback + letter.error_type, kind
        attempt = TaskAttempt.objects.get(task_id=task.id)
        assert (attempt.error, attempt.error_type) == (letter.error, letter.error_type), kind
    assert fresh["error:huge"].last_error.endswith(" the end")
    assert len(dead_letter_of(fresh["error:long_type"]).error_type) == 255
    for delay, fragment in BAD_DELAYS.items():
        task = fresh[f"delay:{delay}"]
        # The handler failed with the clear error; its strategy (Fixed(0), two attempts)
        # retried it once, at once, then dead-lettered it.
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 2), delay
        letter = dead_letter_of(task)
        assert letter.error_type == "taskqueue.exceptions.InvalidTaskOption", delay
        assert fragment in letter.error, (delay, letter.error)
        errors = TaskAttempt.objects.filter(task_id=task.id).values_list("error", flat=True)
        assert len(errors) == 2 and all(fragment in error for error in errors), delay
    for n in range(12):
        assert fresh[f"ledger:{n}"].status == TaskStatus.COMPLETED, n
    executions = Counter(LedgerEntry.objects.values_list("n", flat=True))
    assert executions == Counter(range(12)), executions


# --- bad outcomes, one worker that keeps going ------------------------------------------------


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_bad_outcomes_fail_only_their_task_and_the_worker_keeps_going(start_worker, pool):
    tasks = enqueue_bad_outcomes()
    worker = start_worker("--pool", pool, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    with worker_stderr_on_failure(worker):
        wait_for(lambda: all_finished(tasks), timeout=90, message="every task to finish")
        assert_bad_outcomes_recorded(tasks)
        # Still claiming new work afterwards.
        later = [taskqueue.enqueue("ledger", {"n": 100 + n}) for n in range(3)]
        wait_for(lambda: all_finished(later), timeout=30, message="the later tasks")
        assert worker.poll() is None, "the worker stopped"
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code, _, log = finish_worker(worker, timeout=SHUTDOWN_TIMEOUT + 10)
        assert code == 0, log
        assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT + 5, log
    assert "unexpected error" not in log, log
    assert all(Task.objects.get(id=t.id).status == TaskStatus.COMPLETED for t in later)
    assert_every_row_reads_back_and_none_running()


def test_two_workers_share_bad_outcomes_and_run_every_task_once(start_worker):
    tasks = enqueue_bad_outcomes()
    workers = [start_worker("--shutdown-timeout", str(SHUTDOWN_TIMEOUT)) for _ in range(2)]
    with worker_stderr_on_failure(*workers):
        wait_for(lambda: all_finished(tasks), timeout=90, message="every task to finish")
        assert_bad_outcomes_recorded(tasks)
        assert all(worker.poll() is None for worker in workers), "a worker stopped"
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            code, _, log = finish_worker(worker, timeout=SHUTDOWN_TIMEOUT + 10)
            assert code == 0, log
    assert_every_row_reads_back_and_none_running()


def test_bad_outcomes_in_a_burst_worker(run_worker):
    tasks = enqueue_bad_outcomes()
    result = run_worker("--burst", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    assert all_finished(tasks), result.stderr
    assert_bad_outcomes_recorded(tasks)
    assert_every_row_reads_back_and_none_running()


# --- writes the database itself refuses (triggers) --------------------------------------------


@pytest.fixture
def refuse(transactional_db: None) -> Iterator[Callable[[str, str, str, str], None]]:
    """Install triggers that make the database refuse some writes; dropped at teardown."""
    installed: list[tuple[str, str]] = []
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION taskqueue_test_refuse() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by a test trigger on %', TG_TABLE_NAME; END $$"
            )

    def install(name: str, table: str, event: str, condition: str) -> None:
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW "
                    f"WHEN ({condition}) EXECUTE FUNCTION taskqueue_test_refuse()"
                )
            else:
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW "
                    f"WHEN {condition} BEGIN "
                    f"SELECT RAISE(ABORT, 'refused by a test trigger on {table}'); END"
                )
        installed.append((name, table))

    yield install
    with connection.cursor() as cursor:
        for name, table in installed:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            cursor.execute("DROP FUNCTION IF EXISTS taskqueue_test_refuse()")


TASKS = Task._meta.db_table
DEAD_LETTERS = DeadLetter._meta.db_table
ATTEMPTS = TaskAttempt._meta.db_table
REFUSED_COMPLETION = "NEW.status = 'completed' AND NEW.task_type = 'refused_by_database'"


def test_a_batch_the_database_refuses_is_written_one_by_one(run_worker, refuse):
    refuse("taskqueue_test_refuse_completion", TASKS, "UPDATE", REFUSED_COMPLETION)
    refused = taskqueue.enqueue("refused_by_database", {"n": 1})
    normal = [taskqueue.enqueue("ledger", {"n": n}) for n in range(12)]
    result = run_worker("--burst")
    assert "writing them one by one" in result.stderr, result.stderr
    refused = Task.objects.get(id=refused.id)
    assert (refused.status, refused.attempts) == (TaskStatus.FAILED, 1), result.stderr
    letter = dead_letter_of(refused)
    assert letter.error_type == "UnstorableOutcome"
    assert "the outcome of this attempt (succeeded) could not be stored" in letter.error
    assert "refused by a test trigger" in letter.error, letter.error
    assert all(Task.objects.get(id=t.id).status == TaskStatus.COMPLETED for t in normal)
    assert Counter(LedgerEntry.objects.values_list("n", flat=True)) == Counter(range(12))
    assert_every_row_reads_back_and_none_running()


@pytest.mark.parametrize("refused_table", ["attempts", "dead letters"])
def test_an_outcome_that_cannot_even_be_dead_lettered_still_ends(run_worker, refuse, refused_table):
    refuse("taskqueue_test_refuse_completion", TASKS, "UPDATE", REFUSED_COMPLETION)
    if refused_table == "attempts":  # the dead letter's attempt row is refused
        refuse("taskqueue_test_refuse_attempt", ATTEMPTS, "INSERT", "NEW.number > 0")
    else:
        refuse(
            "taskqueue_test_refuse_dead_letter",
            DEAD_LETTERS,
            "INSERT",
            "NEW.task_type = 'refused_by_database'",
        )
    refused = taskqueue.enqueue("refused_by_database", {"n": 1})
    normal = taskqueue.enqueue("ledger", {"n": 7})
    result = run_worker("--burst")
    assert "could not dead-letter task" in result.stderr, result.stderr
    refused = Task.objects.get(id=refused.id)
    assert (refused.status, refused.last_error) == (TaskStatus.FAILED, UNRECORDABLE_ERROR)
    assert refused.completed_at is not None
    letters = list(DeadLetter.objects.filter(task_id=refused.id))
    if refused_table == "attempts":
        assert [(d.error_type, d.error) for d in letters] == [
            ("UnstorableOutcome", UNRECORDABLE_ERROR)
        ]
    else:  # the one case where a failed task has no dead letter; the log says so
        assert letters == []
        assert "it is failed without one" in result.stderr, result.stderr
    assert Task.objects.get(id=normal.id).status == TaskStatus.COMPLETED
    assert_every_row_reads_back_and_none_running()


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_an_unexpected_loop_error_drains_releases_and_exits_non_zero(start_worker, refuse, pool):
    # A claim the database refuses with a non-connection error: not an outage to wait out.
    refuse(
        "taskqueue_test_refuse_claim",
        TASKS,
        "UPDATE",
        "NEW.status = 'running' AND NEW.task_type = 'claim_refused'",
    )
    worker = start_worker(
        "--pool", pool, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--id", f"doomed-{pool}"
    )
    finishes = taskqueue.enqueue("sleep_then_ledger", {"n": 1, "seconds": 2.0})
    stuck = taskqueue.enqueue("sleep_then_ledger", {"n": 2, "seconds": 60.0})
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.RUNNING).count() == 2,
            timeout=60,
            message="both sleepers to run",
        )
        fault = taskqueue.enqueue("claim_refused", {})
        started = time.monotonic()
        code, _, log = finish_worker(worker, timeout=SHUTDOWN_TIMEOUT + 20)
        took = time.monotonic() - started
    assert code == 1, log
    assert "hit an unexpected error" in log and "refused by a test trigger" in log, log
    # The drain waits the shutdown timeout at most; closing the pool takes a few seconds.
    assert took < SHUTDOWN_TIMEOUT + 8, f"took {took:.1f} s to exit:\n{log}"
    # The task that finished within the shutdown timeout has its outcome written...
    assert Task.objects.get(id=finishes.id).status == TaskStatus.COMPLETED, log
    assert list(LedgerEntry.objects.values_list("n", flat=True)) == [1]
    # ...the one still running was released with its attempt given back, and the task whose
    # claim failed was never claimed.
    stuck = Task.objects.get(id=stuck.id)
    assert (stuck.status, stuck.attempts, stuck.claimed_by) == (TaskStatus.PENDING, 0, None)
    fault = Task.objects.get(id=fault.id)
    assert (fault.status, fault.attempts) == (TaskStatus.PENDING, 0)
    assert Worker.objects.get(id=f"doomed-{pool}").status == WorkerStatus.STOPPED
    assert_every_row_reads_back_and_none_running()


# --- retry delays are bounded at 10 years -----------------------------------------------------


def claimed(task_type: str, payload: dict, attempts: int = 1) -> ClaimedTask:
    """A claimed task as the executor receives it (nothing is written)."""
    return ClaimedTask(
        id=uuid.uuid4(),
        task_type=task_type,
        queue="default",
        payload=payload,
        priority=0,
        attempts=attempts,
        max_attempts=2,
        retry=Fixed(0).to_dict(),
        timeout=None,
        lease_id=uuid.uuid4(),
        started_at=None,
    )


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("inf", "Retry delay is infinite, over the maximum of 10 years"),
        ("nan", "Retry delay is NaN"),
        ("1e12", "Retry delay is 1e+12 s, over the maximum of 10 years"),
        ("huge_int", "Retry delay is "),
        ("timedelta", "over the maximum of 10 years"),
        ("text", "Retry delay must be a number of seconds or a timedelta"),
    ],
)
def test_a_retry_delay_that_cannot_be_stored_fails_the_attempt(kind, fragment):
    for attempts, expected in ((1, OutcomeKind.RETRY), (2, OutcomeKind.DEAD)):
        task = claimed("retry_unbounded", {"delay": kind}, attempts)
        outcome, _ = execute(task, "executor-test", AsyncRunner(), random.Random(1))
        # The strategy (Fixed(0), two attempts) decides: retry at once, then dead.
        assert (outcome.kind, outcome.delay) == (expected, 0.0), outcome
        assert outcome.error_type == "taskqueue.exceptions.InvalidTaskOption"
        assert fragment in outcome.error, outcome.error
        assert len(outcome.error) < 200, outcome.error
        # The traceback shows where the handler asked for it.
        assert "raise taskqueue.Retry(" in outcome.traceback, outcome.traceback


def test_a_retry_delay_up_to_the_maximum_is_kept():
    task = claimed("asks_retry", {"delay": MAX_DELAY_SECONDS})
    outcome, _ = execute(task, "executor-test", AsyncRunner(), random.Random(1))
    assert (outcome.kind, outcome.delay, outcome.error) == (
        OutcomeKind.RETRY,
        MAX_DELAY_SECONDS,
        "not ready",
    )


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Fixed(10**12), "retry seconds is 1e+12 s, over the maximum of 10 years"),
        (lambda: Exponential(max_delay=1e12), "retry max_delay is 1e+12 s, over the maximum"),
        (lambda: Linear(max_delay=MAX_DELAY_SECONDS + 1), "retry max_delay is 3.15619e+08 s"),
    ],
    ids=["fixed", "exponential", "linear"],
)
def test_strategies_refuse_delays_over_the_maximum(build, fragment):
    with pytest.raises(InvalidTaskOption) as caught:
        build()
    assert fragment in str(caught.value)
    assert Fixed(MAX_DELAY_SECONDS).seconds == MAX_DELAY_SECONDS


def test_a_delay_computed_past_the_maximum_is_clamped():
    class Forever(RetryStrategy):
        def delay(self, attempt: int, rng: random.Random) -> float:
            return 1e12

    assert next_delay(1, Forever(), random.Random(1)) == MAX_DELAY_SECONDS
    assert bounded_delay(float("inf")) == MAX_DELAY_SECONDS
    assert bounded_delay(10**5000) == MAX_DELAY_SECONDS
    assert bounded_delay(float("nan")) == 0.0
    assert bounded_delay(-5) == 0.0
    assert bounded_delay(42) == 42.0


def test_retry_later_never_stores_an_unreadable_run_at():
    taskqueue.enqueue("noop", {})
    (claimed,) = store.claim_due_tasks("clamp-test", ["default"], 1)
    before = db_now(connection.alias)
    assert store.retry_later(claimed, worker_id="clamp-test", delay=1e12, error_type="E", error="e")
    task = Task.objects.get(id=claimed.id)  # would raise if run_at were in the year 33715
    assert task.status == TaskStatus.RETRYING
    assert before + MAX_DELAY - timedelta(minutes=1) <= task.run_at
    assert task.run_at <= db_now(connection.alias) + MAX_DELAY
    assert_every_row_reads_back_and_none_running()


# --- recordable texts -------------------------------------------------------------------------


def test_recordable_cuts_huge_texts_keeping_head_and_tail_and_escapes():
    text = "start " + "x" * 1_000_000 + " \x00 end"
    cut = recordable(text, 1000)
    assert len(cut) <= 1000
    assert cut.startswith("start ") and cut.endswith(" \\x00 end")
    assert "characters omitted" in cut
    assert recordable("lone \ud800", 100) == "lone \\ud800"
    assert recordable("fine", 100) == "fine"
