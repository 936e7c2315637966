"""Retention: what prune deletes and keeps, batches, the command, the built-in handler, checks."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

import taskqueue
from taskqueue import store
from taskqueue.builtins.prune import PRUNE_TASK, RETENTION_SCHEDULE, prune
from taskqueue.checks import check_settings
from taskqueue.core.registry import registry
from taskqueue.models import (
    DeadLetter,
    Schedule,
    Task,
    TaskAttempt,
    TaskDependency,
    TaskStatus,
    Worker,
    WorkerStatus,
    Workflow,
)
from tests.factories import TaskFactory, past

HOUR = 3600
DAY = 86400
# Rows this far either side of their cutoff: room for the time between setup and the prune.
MARGIN = 120

RETENTION = {
    "completed": HOUR,
    "cancelled": 2 * HOUR,
    "reviewed_dead": 3 * HOUR,
    "workers": 4 * HOUR,
}


@pytest.fixture
def retention(settings: Any) -> Callable[..., None]:
    """Set RETENTION sub-keys for the test (the others keep their defaults)."""

    def configure(**values: Any) -> None:
        settings.TASKQUEUE = {**settings.TASKQUEUE, "RETENTION": {**RETENTION, **values}}

    configure()
    return configure


def finished(status: str, age: float, **fields: Any) -> Task:
    return TaskFactory(status=status, completed_at=past(age), **fields)


def dead(age: float, *, reviewed_age: float | None, resolved_age: float | None = None) -> Task:
    """A failed task whose dead letter was reviewed ``reviewed_age`` seconds ago (None: never)."""
    task = finished(TaskStatus.FAILED, age)
    DeadLetter.objects.create(
        task=task,
        task_type=task.task_type,
        error="boom",
        reviewed=reviewed_age is not None,
        reviewed_at=None if reviewed_age is None else past(reviewed_age),
        resolved_at=None if resolved_age is None else past(resolved_age),
    )
    return task


def worker_row(status: str, heartbeat_age: float) -> Worker:
    return Worker.objects.create(
        id=f"host:{uuid.uuid4().hex[:8]}",
        hostname="host",
        pid=1,
        concurrency=1,
        status=status,
        last_heartbeat=past(heartbeat_age),
    )


def workflow(created_age: float) -> Workflow:
    flow = Workflow.objects.create(name="wf")
    Workflow.objects.filter(id=flow.id).update(created_at=past(created_age))
    return flow


def exists(row: Any) -> bool:
    return type(row).objects.filter(pk=row.pk).exists()


# --- what goes and what stays ----------------------------------------------------------


@pytest.mark.django_db
def test_completed_and_cancelled_tasks_go_just_past_their_age(retention: Any) -> None:
    old_completed = finished(TaskStatus.COMPLETED, HOUR + MARGIN)
    young_completed = finished(TaskStatus.COMPLETED, HOUR - MARGIN)
    old_cancelled = finished(TaskStatus.CANCELLED, 2 * HOUR + MARGIN)
    # Past the completed age but not the cancelled one: each state has its own age.
    young_cancelled = finished(TaskStatus.CANCELLED, 2 * HOUR - MARGIN)
    TaskAttempt.objects.create(task=old_completed, number=1, outcome="failed", error="x")
    # Never pruned, however old: unfinished work, and dead letters nobody has reviewed.
    unfinished = [
        TaskFactory(status=status, created_at=past(30 * DAY), run_at=past(30 * DAY))
        for status in ("pending", "scheduled", "waiting", "running", "retrying")
    ]
    unreviewed = dead(30 * DAY, reviewed_age=None)

    result = prune()

    assert result.complete
    assert result.counts["completed"] == 1
    assert result.counts["cancelled"] == 1
    assert not exists(old_completed) and not exists(old_cancelled)
    assert not TaskAttempt.objects.filter(task_id=old_completed.id).exists()
    assert exists(young_completed) and exists(young_cancelled) and exists(unreviewed)
    assert all(exists(task) for task in unfinished)


@pytest.mark.django_db
def test_reviewed_dead_tasks_go_with_their_dead_letters(retention: Any) -> None:
    age = 3 * HOUR
    reviewed_long_ago = dead(30 * DAY, reviewed_age=age + MARGIN)
    # Failed long ago, but reviewed recently: the age counts from the review.
    reviewed_recently = dead(30 * DAY, reviewed_age=age - MARGIN)
    unreviewed = dead(30 * DAY, reviewed_age=None)

    result = prune()

    assert result.counts["reviewed_dead"] == 1
    assert not exists(reviewed_long_ago)
    assert not DeadLetter.objects.filter(task_id=reviewed_long_ago.id).exists()
    assert exists(reviewed_recently) and exists(unreviewed)
    assert DeadLetter.objects.filter(task_id__in=[reviewed_recently.id, unreviewed.id]).count() == 2


@pytest.mark.django_db
def test_resolved_dead_letters_go_and_their_retried_task_stays(retention: Any) -> None:
    age = 3 * HOUR
    # Retried from the dead-letter state: the task is pending again, its old letters history.
    retried = TaskFactory(status=TaskStatus.PENDING)
    old_letter = DeadLetter.objects.create(
        task=retried, task_type="noop", resolved_at=past(age + MARGIN)
    )
    young_letter = DeadLetter.objects.create(
        task=retried, task_type="noop", resolved_at=past(age - MARGIN)
    )
    # A task that died again after a retry: its current letter is unreviewed, so it stays.
    died_again = dead(30 * DAY, reviewed_age=None)
    DeadLetter.objects.create(task=died_again, task_type="noop", resolved_at=past(30 * DAY))

    result = prune()

    assert result.counts["resolved_dead_letters"] == 2
    assert not exists(old_letter)
    assert exists(young_letter) and exists(retried) and exists(died_again)
    assert list(
        DeadLetter.objects.filter(task=died_again).values_list("resolved_at", flat=True)
    ) == [None]


@pytest.mark.django_db
def test_a_finished_upstream_stays_while_a_dependent_still_waits(retention: Any) -> None:
    upstream = finished(TaskStatus.COMPLETED, 30 * DAY, has_dependents=True)
    dependent = TaskFactory(status=TaskStatus.WAITING)
    TaskDependency.objects.create(task=dependent, depends_on=upstream)
    # Its dependents all finished: nothing needs its result any more.
    released = finished(TaskStatus.COMPLETED, 30 * DAY, has_dependents=True)
    TaskDependency.objects.create(
        task=finished(TaskStatus.COMPLETED, HOUR - MARGIN), depends_on=released
    )

    assert prune().counts["completed"] == 1
    assert exists(upstream) and not exists(released)

    Task.objects.filter(id=dependent.id).update(status=TaskStatus.PENDING)
    assert prune().counts["completed"] == 0, "a pending dependent has not read its input yet"
    Task.objects.filter(id=dependent.id).update(status=TaskStatus.CANCELLED, completed_at=past(60))
    assert prune().counts["completed"] == 1
    assert not exists(upstream)
    assert not TaskDependency.objects.filter(depends_on_id=upstream.id).exists()


@pytest.mark.django_db
def test_old_stopped_and_lost_worker_rows_go(retention: Any) -> None:
    age = 4 * HOUR
    old_stopped = worker_row(WorkerStatus.STOPPED, age + MARGIN)
    old_lost = worker_row(WorkerStatus.LOST, age + MARGIN)
    young_stopped = worker_row(WorkerStatus.STOPPED, age - MARGIN)
    # Silent for long but not yet marked lost: rescue decides about it, not retention.
    silent_running = worker_row(WorkerStatus.RUNNING, 30 * DAY)

    assert prune().counts["workers"] == 2
    assert not exists(old_stopped) and not exists(old_lost)
    assert exists(young_stopped) and exists(silent_running)


@pytest.mark.django_db
def test_workflows_go_once_their_tasks_are_gone(retention: Any) -> None:
    emptied = workflow(30 * DAY)
    finished(TaskStatus.COMPLETED, 30 * DAY, workflow=emptied)
    finished(TaskStatus.CANCELLED, 30 * DAY, workflow=emptied)
    running = workflow(30 * DAY)
    TaskFactory(status=TaskStatus.RUNNING, workflow=running)
    # Just created: its tasks may still be on their way.
    fresh = workflow(60)

    result = prune()

    assert result.counts["workflows"] == 1
    assert not exists(emptied)
    assert exists(running) and exists(fresh)


@pytest.mark.django_db
def test_none_keeps_rows_forever(retention: Any) -> None:
    retention(completed=None, cancelled=None, reviewed_dead=None, workers=None)
    rows = [
        finished(TaskStatus.COMPLETED, 365 * DAY),
        finished(TaskStatus.CANCELLED, 365 * DAY),
        dead(365 * DAY, reviewed_age=365 * DAY),
        DeadLetter.objects.create(
            task=TaskFactory(), task_type="noop", resolved_at=past(365 * DAY)
        ),
        worker_row(WorkerStatus.STOPPED, 365 * DAY),
    ]

    result = prune()

    assert result.total == 0
    assert set(result.kept_forever) == {
        "completed",
        "cancelled",
        "reviewed_dead",
        "resolved_dead_letters",
        "workers",
    }
    assert all(exists(row) for row in rows)


@pytest.mark.django_db
def test_prune_rejects_a_bad_batch_size_or_budget() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        prune(batch_size=0)
    with pytest.raises(ValueError, match="time_budget must be a positive number"):
        prune(time_budget=0)


# --- batches ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_each_batch_is_its_own_transaction_of_at_most_batch_size_rows(retention: Any) -> None:
    doomed = [finished(TaskStatus.COMPLETED, DAY) for _ in range(10)]
    events: list[Any] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith('DELETE FROM "taskqueue_task" '):
            # Every task delete must run inside a transaction that commits before the next.
            assert connection.in_atomic_block, "a batch was deleted outside a transaction"
            events.append(("delete", len(params)))
            transaction.on_commit(lambda: events.append("commit"))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        result = prune(batch_size=3)

    assert result.counts["completed"] == 10
    assert not Task.objects.filter(id__in=[task.id for task in doomed]).exists()
    assert events == [
        ("delete", 3),
        "commit",
        ("delete", 3),
        "commit",
        ("delete", 3),
        "commit",
        ("delete", 1),
        "commit",
    ]


@pytest.mark.django_db
def test_a_run_stopped_between_batches_leaves_the_rest_to_the_next(retention: Any) -> None:
    for _ in range(5):
        finished(TaskStatus.COMPLETED, DAY)

    # Asked to stop as soon as anything was deleted: checked between batches, not inside one.
    first = prune(batch_size=2, should_stop=lambda: Task.objects.count() < 5)
    assert not first.complete
    assert first.counts["completed"] == 2
    assert first.total == 2
    assert Task.objects.count() == 3

    # A spent time budget stops a run the same way, before its next batch.
    assert prune(batch_size=2, time_budget=1e-9).total == 0
    second = prune(batch_size=2)
    assert second.complete
    assert second.counts["completed"] == 3
    assert Task.objects.count() == 0


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_the_batch_query_can_use_the_finished_index(retention: Any) -> None:
    cutoffs = store.Cutoffs.from_retention("default", {**RETENTION, "reviewed_dead": None})
    rows = store.retention.prunable("completed", "default", cutoffs)
    assert rows is not None
    with connection.cursor() as cursor:
        # Not a planner preference on a tiny table: proof that the partial index's
        # condition matches the query, so the planner may use it on a large one.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = rows.order_by("completed_at").values("pk")[:1000].explain()
    assert "taskqueue_task_finished_idx" in plan, plan


# --- the command -----------------------------------------------------------------------


def run_prune(*args: str) -> str:
    out = io.StringIO()
    call_command("taskqueue_prune", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_command_dry_run_counts_and_deletes_nothing(retention: Any) -> None:
    retention(workers=None)
    old = [finished(TaskStatus.COMPLETED, DAY) for _ in range(2)]
    old.append(dead(30 * DAY, reviewed_age=30 * DAY))
    kept = finished(TaskStatus.COMPLETED, 60)

    output = run_prune("--dry-run")

    lines = output.splitlines()
    assert "completed tasks          2" in lines
    assert "reviewed dead tasks      1" in lines
    assert "cancelled tasks          0" in lines
    assert "stopped or lost workers  0  (kept forever)" in lines
    assert lines[-1] == "Would delete 3 row(s) in all."
    assert all(exists(task) for task in [*old, kept])

    output = run_prune("--batch-size", "1")

    assert "completed tasks          2" in output.splitlines()
    assert output.splitlines()[-1] == "Deleted 3 row(s) in all."
    assert not any(exists(task) for task in old)
    assert exists(kept)


@pytest.mark.django_db
def test_command_rejects_a_bad_batch_size() -> None:
    with pytest.raises(CommandError, match="--batch-size"):
        run_prune("--batch-size", "0")


# --- the built-in handler --------------------------------------------------------------


def test_prune_is_a_built_in_handler() -> None:
    spec = registry.get(PRUNE_TASK)
    assert spec.takes_context
    assert spec.queue == "default"
    assert spec.priority < 0


def test_the_handler_prunes_through_a_real_worker(run_worker: Any) -> None:
    # The worker subprocess reads tests/settings.py: the default RETENTION (7 days).
    old = [finished(TaskStatus.COMPLETED, 8 * DAY) for _ in range(3)]
    young = finished(TaskStatus.COMPLETED, 6 * DAY)
    stopped = worker_row(WorkerStatus.STOPPED, 8 * DAY)
    task = taskqueue.enqueue(PRUNE_TASK, {})

    run_worker("--burst")

    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED, task.last_error
    assert task.result["complete"] is True
    # Should the run cross a slot of the built-in schedule, its own prune shares the work.
    runs = Task.objects.filter(task_type=PRUNE_TASK, status=TaskStatus.COMPLETED)
    assert sum(run.result["completed"] for run in runs) == 3
    assert sum(run.result["workers"] for run in runs) == 1
    assert not any(exists(row) for row in [*old, stopped])
    assert exists(young)


def declared_retention_schedule() -> Any:
    from taskqueue.schedules.declarations import declarations

    problems: list[tuple[str, str]] = []
    found = [d for d in declarations.code(problems) if d.name == RETENTION_SCHEDULE]
    assert not [p for p in problems if p[0] == RETENTION_SCHEDULE], problems
    return found[0] if found else None


def test_the_built_in_schedule_runs_prune_on_the_retention_cron(retention: Any) -> None:
    declared = declared_retention_schedule()
    assert (declared.task, declared.cron) == (PRUNE_TASK, "*/15 * * * *")

    retention(cron="0 3 * * *")
    assert declared_retention_schedule().cron == "0 3 * * *"

    # None: no built-in schedule; the project runs taskqueue_prune itself.
    retention(cron=None)
    assert declared_retention_schedule() is None


@pytest.mark.django_db
def test_schedule_sync_stores_the_built_in_schedule(retention: Any) -> None:
    from taskqueue.schedules import sync_schedules

    sync_schedules()

    row = Schedule.objects.get(name=RETENTION_SCHEDULE)
    assert (row.task_type, row.cron, row.enabled) == (PRUNE_TASK, "*/15 * * * *", True)


# --- checks ----------------------------------------------------------------------------


def check(settings: Any, **retention: Any) -> list[Any]:
    settings.TASKQUEUE = {"RETENTION": retention}
    return check_settings()


@pytest.mark.parametrize(
    ("key", "value", "id_", "message"),
    [
        ("completed", 0, "E006", "TASKQUEUE['RETENTION']['completed'] must be a positive number"),
        ("workers", -1, "E006", "TASKQUEUE['RETENTION']['workers'] must be a positive number"),
        ("reviewed_dead", "30d", "E002", "TASKQUEUE['RETENTION']['reviewed_dead'] must be a"),
        ("batch_size", 0, "E006", "TASKQUEUE['RETENTION']['batch_size'] must be a positive"),
        ("batch_size", 2.5, "E002", "TASKQUEUE['RETENTION']['batch_size'] must be a positive"),
        ("batch_size", None, "E002", "TASKQUEUE['RETENTION']['batch_size'] must be a positive"),
        ("cron", "every hour", "E004", "TASKQUEUE['RETENTION']['cron'] is not a valid cron"),
        ("cron", "0 0 30 2 *", "E004", "TASKQUEUE['RETENTION']['cron'] is not a valid cron"),
        ("cron", 15, "E004", "TASKQUEUE['RETENTION']['cron'] is not a valid cron"),
    ],
)
def test_bad_retention_values_are_reported_naming_the_key(
    settings: Any, key: str, value: Any, id_: str, message: str
) -> None:
    # Ids by kind of problem (docs/checks.md): E002 type, E006 range, E004 schedule (cron).
    messages = check(settings, **{key: value})
    assert [m.id for m in messages] == [f"taskqueue.{id_}"]
    assert messages[0].msg.startswith(message)
    assert repr(value) in messages[0].msg


def test_good_retention_values_pass(settings: Any) -> None:
    assert check(settings, completed=None, workers=60, cron="0 */6 * * *", batch_size=10) == []
    assert check(settings, cancelled=1.5, reviewed_dead=None, cron="@hourly") == []
    assert check(settings, cron=None) == []
