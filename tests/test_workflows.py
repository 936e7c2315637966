"""Workflows: depends_on, chain, group and fan-in, with real worker processes.

Order is checked on the database clock (a step is claimed only after its upstream's
completion committed) and on the handlers' own clocks (a step starts after its upstream
returned). The races between an enqueue and a completion, and between two completions of a
fan-in's upstreams, run in threads with connections of their own.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction

import taskqueue
from taskqueue import signals, store
from taskqueue.events import TaskEvent
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import Task, TaskDependency, TaskStatus, Workflow
from taskqueue.store.waiting_sweep import sweep_waiting_tasks
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.factories import TaskFactory, UserFactory, claim, kill
from tests.testapp.tasks import wf_step

step = taskqueue.step
RACE_ROUNDS = 30


def fresh(task: Task) -> Task:
    return Task.objects.get(pk=task.pk)


def label_step(label: str, work: float = 0.0, **options: Any) -> taskqueue.workflows.Step:
    return step("wf_step", {"label": label, "work": work}, **options)


@pytest.fixture
def cancelled_events() -> Iterator[list[TaskEvent]]:
    events: list[TaskEvent] = []

    def receiver(sender: Any, event: TaskEvent, **kwargs: Any) -> None:
        events.append(event)

    signals.task_cancelled.connect(receiver)
    yield events
    signals.task_cancelled.disconnect(receiver)


# --- with real workers -----------------------------------------------------------------------


def test_chain_runs_strictly_in_order_and_passes_results(
    run_worker: Callable[..., Any],
) -> None:
    run = taskqueue.chain(
        label_step("a", 0.05),
        label_step("b"),
        step("atomic_ledger", {"n": 7}),  # completes in its own transaction (complete_one)
        label_step("c", 0.05),
        label_step("d"),
        name="in order",
    ).enqueue()
    assert [t.status for t in run.tasks] == ["pending"] + ["waiting"] * 4
    run_worker("--burst")

    tasks = [fresh(t) for t in run.tasks]
    assert [t.status for t in tasks] == ["completed"] * 5
    for before, after in itertools.pairwise(tasks):
        assert after.started_at >= before.completed_at, (before, after)
    a, b, ledger, c, d = (t.result for t in tasks)
    assert b["upstream"] == ["a"] and b["started"] >= a["finished"]
    assert ledger == 7
    assert c["upstream"] == [7]
    assert d["upstream"] == ["c"] and d["started"] >= c["finished"]
    assert a["upstream"] == []


def test_fan_in_starts_after_every_member_and_sees_results_in_group_order(
    run_worker: Callable[..., Any],
) -> None:
    # The first member works longest, so the members finish out of group order.
    run = taskqueue.chain(
        label_step("start"),
        taskqueue.group(label_step("slow", 0.4), label_step("quick"), label_step("middle", 0.2)),
        label_step("fan-in"),
    ).enqueue()
    run_worker("--burst")

    start, slow, quick, middle, fan_in = (fresh(t) for t in run.tasks)
    members = [slow, quick, middle]
    assert all(t.status == TaskStatus.COMPLETED for t in [start, *members, fan_in])
    assert all(t.result["upstream"] == ["start"] for t in members)
    assert fan_in.started_at >= max(t.completed_at for t in members)
    assert fan_in.result["started"] >= max(t.result["finished"] for t in members)
    assert fan_in.result["upstream"] == ["slow", "quick", "middle"]
    positions = TaskDependency.objects.filter(task=fan_in).order_by("position")
    assert [d.depends_on_id for d in positions] == [t.id for t in members]


def test_dead_lettered_upstream_cancels_its_dependents_transitively(
    run_worker: Callable[..., Any],
) -> None:
    run = taskqueue.chain(
        taskqueue.group(
            taskqueue.chain(
                step("wf_fails", {"message": "card declined"}),
                label_step("after-fail"),
                taskqueue.group(label_step("deep-1"), label_step("deep-2")),
            ),
            label_step("other-branch"),
        ),
        label_step("end"),
    ).enqueue()
    run_worker("--burst")

    failed, after, deep1, deep2, other, end = (fresh(t) for t in run.tasks)
    assert failed.status == TaskStatus.FAILED
    assert other.status == TaskStatus.COMPLETED  # a parallel branch is not stopped
    reason = f"upstream task {failed.id} (wf_fails) failed: card declined"
    for task in (after, deep1, deep2, end):
        assert task.status == TaskStatus.CANCELLED, task
        assert task.last_error == reason
        assert task.completed_at is not None


# --- cancellation, and what depends_on finds at enqueue -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancelled_upstream_cancels_dependents_and_announces_each(
    cancelled_events: list[TaskEvent],
) -> None:
    upstream = taskqueue.enqueue("noop", delay=timedelta(hours=1))
    done = taskqueue.enqueue("noop", queue="done")
    assert store.complete_tasks([(claim(done), None)]) == {done.id}
    child = taskqueue.enqueue("noop", depends_on=[upstream])
    grandchild = taskqueue.enqueue("noop", depends_on=[child.id])
    both = taskqueue.enqueue("noop", depends_on=[str(done.id), upstream])
    bystander = taskqueue.enqueue("noop", depends_on=[done])
    assert [child.status, grandchild.status, both.status] == ["waiting"] * 3
    assert bystander.status == TaskStatus.PENDING

    assert taskqueue.cancel(upstream, reason="customer left")
    reason = f"upstream task {upstream.id} (noop) was cancelled: customer left"
    for task in (child, grandchild, both):
        assert fresh(task).status == TaskStatus.CANCELLED
        assert fresh(task).last_error == reason
    assert fresh(bystander).status == TaskStatus.PENDING
    by_task = {event.task_id: event for event in cancelled_events}
    assert set(by_task) == {upstream.id, child.id, grandchild.id, both.id}
    assert by_task[grandchild.id].message == reason
    assert by_task[grandchild.id].task_type == "noop"


@pytest.mark.django_db(transaction=True)
def test_depends_on_finished_tasks_decides_at_once(cancelled_events: list[TaskEvent]) -> None:
    done = taskqueue.enqueue("echo", {"value": 1}, queue="done")
    assert store.complete_tasks([(claim(done), {"value": 1})]) == {done.id}
    dead = taskqueue.enqueue("wf_fails", queue="dead")
    kill(dead, errors=("no route to host",))
    withdrawn = taskqueue.enqueue("noop", delay=60)
    taskqueue.cancel(withdrawn)
    cancelled_events.clear()

    ready = taskqueue.enqueue("noop", depends_on=[done])
    assert ready.status == TaskStatus.PENDING
    later = taskqueue.enqueue("noop", depends_on=[done], delay=timedelta(hours=1))
    assert later.status == TaskStatus.SCHEDULED
    doomed = taskqueue.enqueue("noop", depends_on=[done, dead])
    assert fresh(doomed).status == TaskStatus.CANCELLED
    assert fresh(doomed).last_error == (
        f"upstream task {dead.id} (wf_fails) failed: no route to host"
    )
    assert fresh(doomed).completed_at is not None
    orphan = taskqueue.enqueue("noop", depends_on=[withdrawn])
    assert fresh(orphan).last_error == f"upstream task {withdrawn.id} (noop) was cancelled"
    assert [event.task_id for event in cancelled_events] == [doomed.id, orphan.id]
    assert fresh(done).has_dependents and fresh(dead).has_dependents


@pytest.mark.django_db
def test_unknown_or_malformed_upstreams_are_errors_that_store_nothing() -> None:
    known = taskqueue.enqueue("noop", delay=60)
    missing = uuid.uuid4()
    with pytest.raises(InvalidTaskOption, match=f"unknown task\\(s\\): {missing}"):
        taskqueue.enqueue("noop", depends_on=[known, missing])
    assert not fresh(known).has_dependents  # the whole enqueue rolled back
    with pytest.raises(InvalidTaskOption, match="must be a list"):
        taskqueue.enqueue("noop", depends_on=str(known.id))
    with pytest.raises(InvalidTaskOption, match="'nope' is not a task id"):
        taskqueue.enqueue("noop", depends_on=["nope"])
    with pytest.raises(InvalidTaskOption, match=f"depends_on names unknown task\\(s\\): {missing}"):
        taskqueue.enqueue_many([("noop", {}), {"task_type": "noop", "depends_on": [missing]}])
    assert Task.objects.count() == 1
    assert TaskDependency.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_many_and_handler_options_take_depends_on() -> None:
    upstream = taskqueue.enqueue("noop", queue="up")
    first, second = taskqueue.enqueue_many(
        [{"task_type": "noop", "depends_on": [upstream]}, ("noop", {})]
    )
    via_handler = wf_step.enqueue({"depends_on": [upstream, first]}, label="h")
    assert [first.status, second.status, via_handler.status] == ["waiting", "pending", "waiting"]
    assert store.complete_tasks([(claim(upstream), None)]) == {upstream.id}
    assert fresh(first).status == TaskStatus.PENDING
    assert fresh(via_handler).status == TaskStatus.WAITING  # still waits on `first`
    assert list(
        TaskDependency.objects.filter(task=via_handler)
        .order_by("position")
        .values_list("depends_on_id", flat=True)
    ) == [upstream.id, first.id]


@pytest.mark.django_db
def test_a_dead_task_retried_does_not_revive_its_cancelled_dependents() -> None:
    upstream = taskqueue.enqueue("wf_fails", queue="flaky")
    dependent = taskqueue.enqueue("noop", depends_on=[upstream])
    kill(upstream)
    assert fresh(dependent).status == TaskStatus.CANCELLED
    assert store.requeue_dead([upstream.id]).requeued == 1
    assert store.complete_tasks([(claim(upstream), None)]) == {upstream.id}
    assert fresh(dependent).status == TaskStatus.CANCELLED


# --- chain and group: building, validating, transactions ------------------------------------


@pytest.mark.django_db
def test_workflow_is_stored_as_one_unit_with_its_creator_and_metadata() -> None:
    user = UserFactory()
    run = taskqueue.chain(
        wf_step.step(label="a"),
        taskqueue.group(
            wf_step.step({"priority": "high", "metadata": {"step": "b"}}, label="b"),
            taskqueue.chain(label_step("c1"), label_step("c2", delay=timedelta(minutes=5))),
        ),
        wf_step.step(label="d"),
        name="order 42",
        metadata={"order": 42},
    ).enqueue(created_by=user)

    workflow = Workflow.objects.get()
    assert run.workflow == workflow and run.id == workflow.id
    assert workflow.name == "order 42" and workflow.created_by == user
    tasks = [fresh(t) for t in run.tasks]
    assert [t.payload["label"] for t in tasks] == ["a", "b", "c1", "c2", "d"]
    assert all(t.workflow_id == workflow.id and t.created_by == user for t in tasks)
    assert tasks[1].metadata == {"order": 42, "step": "b"} and tasks[0].metadata == {"order": 42}
    assert tasks[1].priority == 50  # "high"
    assert [t.status for t in tasks] == ["pending"] + ["waiting"] * 4
    assert [t.has_dependents for t in tasks] == [True, True, True, True, False]
    edges = {
        (fresh_label(d.task_id), fresh_label(d.depends_on_id), d.position)
        for d in TaskDependency.objects.all()
    }
    assert edges == {
        ("b", "a", 0),
        ("c1", "a", 0),
        ("c2", "c1", 0),
        ("d", "b", 0),
        ("d", "c2", 1),
    }

    # c2's delay counts from enqueue: released before its time, it is scheduled, not due.
    assert store.complete_tasks([(claim(tasks[0]), {"label": "a"})]) == {tasks[0].id}
    assert [fresh(t).status for t in tasks[1:3]] == ["pending", "pending"]
    claimed = {c.id: c for c in store.claim_due_tasks("w", ["default"], 10)}
    assert set(claimed) == {tasks[1].id, tasks[2].id}
    assert store.complete_tasks([(claimed[tasks[2].id], {"label": "c1"})]) == {tasks[2].id}
    assert fresh(tasks[3]).status == TaskStatus.SCHEDULED
    assert fresh(tasks[4]).status == TaskStatus.WAITING  # b is still running


def fresh_label(task_id: uuid.UUID) -> str:
    return Task.objects.get(pk=task_id).payload["label"]


@pytest.mark.django_db
def test_every_step_is_validated_before_anything_is_stored() -> None:
    good = label_step("fine")
    with pytest.raises(UnknownTaskType, match="step 2 \\(no_such_type\\)"):
        taskqueue.chain(good, step("no_such_type")).enqueue()
    with pytest.raises(InvalidPayload, match="step 3 \\(wf_step\\): payload does not match"):
        taskqueue.chain(good, taskqueue.group(good, step("wf_step", {"wrong": 1}))).enqueue()
    with pytest.raises(
        InvalidTaskOption, match=r"step 1 \(wf_step\): unknown priority 'urgent-ish'"
    ):
        taskqueue.group(label_step("x", priority="urgent-ish")).enqueue()
    with pytest.raises(TypeError, match="chain\\(\\) argument 2 is 'oops'"):
        taskqueue.chain(good, "oops")
    with pytest.raises(TypeError, match="group\\(\\) needs at least one step"):
        taskqueue.group()
    with pytest.raises(TypeError, match="idempotency_key is not supported"):
        step("noop", idempotency_key="k")
    with pytest.raises(TypeError, match="depends_on is not accepted"):
        step("noop", depends_on=[])
    with pytest.raises(InvalidTaskOption, match="workflow name"):
        taskqueue.chain(good, name="x" * 201).enqueue()
    assert not Task.objects.exists() and not Workflow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_leaves_no_workflow_task_or_flag() -> None:
    upstream = taskqueue.enqueue("noop", delay=60)
    with pytest.raises(RuntimeError), transaction.atomic():
        taskqueue.chain(
            label_step("a"), taskqueue.group(label_step("b"), label_step("c"))
        ).enqueue()
        taskqueue.enqueue("noop", depends_on=[upstream])
        assert Task.objects.count() == 5
        raise RuntimeError("the view failed")
    assert list(Task.objects.all()) == [upstream]
    assert not Workflow.objects.exists() and not TaskDependency.objects.exists()
    assert not fresh(upstream).has_dependents


# --- races -----------------------------------------------------------------------------------


def run_together(*actions: Callable[[], object]) -> None:
    """Run ``actions`` in threads (connections of their own), released at the same moment."""
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            action()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racer hung"
    assert errors == []


@pytest.mark.django_db(transaction=True)
def test_enqueue_racing_the_upstream_completion_never_leaves_a_task_waiting() -> None:
    for round_ in range(RACE_ROUNDS):
        upstream = taskqueue.enqueue("noop", queue="race")
        claimed = claim(upstream)
        created: list[Task] = []
        run_together(
            lambda claimed=claimed: store.complete_tasks([(claimed, None)]),
            lambda upstream=upstream, created=created: created.append(
                taskqueue.enqueue("noop", queue="after", depends_on=[upstream])
            ),
        )
        assert fresh(created[0]).status == TaskStatus.PENDING, f"round {round_}"


@pytest.mark.django_db(transaction=True)
def test_upstreams_completing_at_once_release_their_fan_in() -> None:
    for round_ in range(RACE_ROUNDS):
        left = taskqueue.enqueue("noop", queue="race")
        right = taskqueue.enqueue("noop", queue="race")
        fan_in = taskqueue.enqueue("noop", queue="after", depends_on=[left, right])
        claimed = store.claim_due_tasks("racer", ["race"], 2)
        assert {c.id for c in claimed} == {left.id, right.id}
        run_together(*(lambda c=c: store.complete_tasks([(c, None)]) for c in claimed))
        assert fresh(fan_in).status == TaskStatus.PENDING, f"round {round_}"


# --- the sweep -------------------------------------------------------------------------------


def waiting_on(*upstreams: Task) -> Task:
    """A waiting task whose dependency rows were written without the release (a lost race)."""
    task = TaskFactory(status=TaskStatus.WAITING, task_type="noop", queue="swept")
    for position, upstream in enumerate(upstreams):
        TaskDependency.objects.create(task=task, depends_on=upstream, position=position)
    return task


@pytest.mark.django_db
def test_sweep_releases_and_cancels_only_what_is_decided() -> None:
    done = TaskFactory(status=TaskStatus.COMPLETED, has_dependents=True)
    dead = TaskFactory(status=TaskStatus.FAILED, last_error="disk full", has_dependents=True)
    running = TaskFactory(status=TaskStatus.RUNNING, has_dependents=True)
    releasable = waiting_on(done)
    doomed = waiting_on(done, dead)
    still_waiting = waiting_on(done, running)
    below_doomed = waiting_on(doomed)

    result = sweep_waiting_tasks()
    assert result.released == [releasable.id]
    assert set(result.cancelled) == {doomed.id, below_doomed.id}
    assert fresh(releasable).status == TaskStatus.PENDING
    assert fresh(still_waiting).status == TaskStatus.WAITING
    reason = f"upstream task {dead.id} (noop) failed: disk full"
    assert fresh(doomed).last_error == reason and fresh(below_doomed).last_error == reason
    assert sweep_waiting_tasks().released == []


def test_worker_duty_sweeps_waiting_tasks(start_worker: Callable[..., Any]) -> None:
    done = TaskFactory(status=TaskStatus.COMPLETED, has_dependents=True)
    cancelled = TaskFactory(status=TaskStatus.CANCELLED, has_dependents=True)
    left_behind = waiting_on(done)
    doomed = waiting_on(cancelled)
    worker = start_worker("--queues", "swept")
    with worker_stderr_on_failure(worker):
        wait_for(
            lambda: fresh(left_behind).status == TaskStatus.COMPLETED,
            timeout=30,
            message="the sweep to release the task and the worker to run it",
        )
        assert fresh(doomed).status == TaskStatus.CANCELLED
        assert fresh(doomed).last_error == f"upstream task {cancelled.id} (noop) was cancelled"
        worker.terminate()
        code, _, output = finish_worker(worker)
    assert code == 0, output
