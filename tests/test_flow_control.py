"""Per task type flow control: pause, rate limit, concurrency limit, circuit breaker.

The store verbs are tested in process; each control is then shown holding across real
worker processes (``manage.py run_worker``), on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db.models.functions import Now

import taskqueue
from taskqueue import signals, store
from taskqueue.core.registry import build_spec
from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import CircuitState, Task, TaskAttempt, TaskStatus, TaskType
from taskqueue.store import flow
from taskqueue.worker.gates import Gates
from taskqueue.worker.presence import register_worker
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.testapp.models import Counter

USING = "default"
QUEUE = ["flow"]


def register_types() -> None:
    """Write the TaskType rows (and their controls) as a starting worker does."""
    register_worker("test:1:flow", QUEUE, 1)


def fail(task: store.ClaimedTask, error: str = "down") -> None:
    assert store.retry_later(
        task, worker_id="test:1:flow", delay=0, error_type="ConnectionError", error=error
    )


def task_type(name: str) -> TaskType:
    return TaskType.objects.get(name=name)


def stop(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        code, _, log = finish_worker(process)
        assert code == 0, log


# --- options and pure helpers ----------------------------------------------------------------


def test_circuit_breaker_option_is_validated() -> None:
    breaker = taskqueue.CircuitBreaker(failures=2, cooldown=5)
    assert build_spec("x", print, circuit_breaker=breaker).circuit_breaker == breaker
    assert breaker.cooldown == 5.0
    with pytest.raises(ImproperlyConfigured, match="circuit_breaker must be taskqueue"):
        build_spec("x", print, circuit_breaker={"failures": 2})
    with pytest.raises(InvalidTaskOption, match="failures must be a positive integer, got 0"):
        taskqueue.CircuitBreaker(failures=0)
    with pytest.raises(InvalidTaskOption, match="cooldown must be a positive number"):
        taskqueue.CircuitBreaker(cooldown=-1)
    with pytest.raises(ImproperlyConfigured, match="rate_limit must look like"):
        build_spec("x", print, rate_limit="0/s")


def test_rate_parsing_and_bucket() -> None:
    assert flow.parse_rate("5/s") == 5
    assert flow.parse_rate("120/m") == 2
    assert flow.parse_rate("7200/h") == 2
    with pytest.raises(InvalidTaskOption, match="rate_limit must look like '100/m'"):
        flow.parse_rate("5 per second")
    assert flow.bucket_capacity(10) == 2
    assert flow.bucket_capacity(1000) == 101
    assert flow.bucket_capacity(1 / 60) == pytest.approx(1.0017, abs=1e-4)
    now = datetime(2030, 1, 1, tzinfo=UTC)  # time is passed in
    assert flow.refill(None, None, now, 10) == 2  # never counted: full
    assert flow.refill(0.0, now, now + timedelta(seconds=0.05), 10) == pytest.approx(0.5)
    assert flow.refill(0.2, now, now + timedelta(hours=1), 10) == 2  # capped


# --- pause -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_paused_type_is_claimed_nowhere_until_resumed() -> None:
    register_types()
    held = taskqueue.enqueue("flow_plain", {"n": 1})
    assert store.pause_task_types(["flow_plain", "flow_rated"]) == ["flow_plain", "flow_rated"]
    assert store.pause_task_types(["flow_plain"]) == []  # already paused
    assert store.claim_due_tasks("w", QUEUE, 10) == []
    assert flow.claim_gated("flow_plain", "w", QUEUE, 10).tasks == []
    assert "flow_plain" not in flow.gated_task_types(USING, ["flow_plain", "flow_rated"])
    assert Task.objects.filter(pk=held.pk, status=TaskStatus.PENDING, attempts=0).exists()

    assert store.resume_task_types(["flow_plain", "flow_limited"]) == ["flow_plain"]
    assert [task.id for task in store.claim_due_tasks("w", QUEUE, 10)] == [held.id]


@pytest.mark.django_db
def test_pausing_lets_claimed_tasks_finish() -> None:
    register_types()
    task = taskqueue.enqueue("flow_plain", {"n": 1})
    (claimed,) = store.claim_due_tasks("w", QUEUE, 10)
    store.pause_task_types(["flow_plain"])
    assert store.complete_tasks([(claimed, 1)]) == {task.id}


# --- rate limit ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rate_limit_spends_tokens_from_the_shared_bucket() -> None:
    register_types()
    taskqueue.enqueue_many([("flow_rated", {"n": n}) for n in range(5)])
    assert store.claim_due_tasks("w", QUEUE, 10) == []  # never by the main claim
    first = flow.claim_gated("flow_rated", "w1", QUEUE, 10)
    assert len(first.tasks) == 2  # a full bucket: 1 + 10/s x 0.1 s
    assert first.retry_after == pytest.approx(0.1, abs=0.01)  # the next token
    second = flow.claim_gated("flow_rated", "w2", QUEUE, 10)
    assert second.tasks == []
    assert 0 < second.retry_after <= 0.1
    row = task_type("flow_rated")
    assert 0 <= row.rate_tokens < 1  # what refilled since the first claim
    # A bucket counted a second ago has refilled (to its capacity).
    TaskType.objects.filter(name="flow_rated").update(rate_updated_at=Now() - timedelta(seconds=1))
    assert len(flow.claim_gated("flow_rated", "w2", QUEUE, 10).tasks) == 2


# --- concurrency limit -----------------------------------------------------------------------


@pytest.mark.django_db
def test_concurrency_limit_counts_running_tasks_of_every_worker() -> None:
    register_types()
    taskqueue.enqueue_many([("flow_limited", {"n": n}) for n in range(5)])
    assert store.claim_due_tasks("w", QUEUE, 10) == []
    one = flow.claim_gated("flow_limited", "w1", QUEUE, 1).tasks
    two = flow.claim_gated("flow_limited", "w2", QUEUE, 10).tasks
    assert (len(one), len(two)) == (1, 1)
    blocked = flow.claim_gated("flow_limited", "w3", QUEUE, 10)
    assert (blocked.tasks, blocked.retry_after) == ([], None)
    assert store.complete_tasks([(one[0], None)]) == {one[0].id}
    assert len(flow.claim_gated("flow_limited", "w3", QUEUE, 10).tasks) == 1


# --- circuit breaker -------------------------------------------------------------------------


@pytest.fixture
def circuit_events() -> Any:
    received: list[Any] = []

    def receiver(sender: Any, event: Any, **kwargs: Any) -> None:
        received.append(event)

    signals.circuit_opened.connect(receiver)
    signals.circuit_closed.connect(receiver)
    yield received
    signals.circuit_opened.disconnect(receiver)
    signals.circuit_closed.disconnect(receiver)


@pytest.mark.django_db(transaction=True)
def test_breaker_opens_holds_probes_and_closes(circuit_events: list[Any]) -> None:
    register_types()
    tasks = taskqueue.enqueue_many([("flow_breaker", {"n": n}) for n in range(4)])
    for _ in range(2):
        fail(store.claim_due_tasks("w", QUEUE, 1)[0])
    assert task_type("flow_breaker").circuit_state == CircuitState.CLOSED
    fail(store.claim_due_tasks("w", QUEUE, 1)[0])
    row = task_type("flow_breaker")
    assert (row.circuit_state, row.consecutive_failures) == (CircuitState.OPEN, 3)
    assert [(e.name, e.severity, e.task_type) for e in circuit_events] == [
        ("circuit_opened", "warning", "flow_breaker")
    ]
    assert "opened after 3 failures in a row" in circuit_events[0].message

    # Open: claimed nowhere, and the gated claim says when the cool-down ends.
    attempts = sorted(Task.objects.values_list("attempts", flat=True))
    assert store.claim_due_tasks("w", QUEUE, 10) == []
    held = flow.claim_gated("flow_breaker", "w", QUEUE, 10)
    assert held.tasks == []
    assert 1.0 < held.retry_after <= 1.5
    assert sorted(Task.objects.values_list("attempts", flat=True)) == attempts

    # Cool-down over: exactly one probe; its failure opens the circuit again.
    TaskType.objects.filter(name="flow_breaker").update(
        circuit_opened_at=Now() - timedelta(seconds=2)
    )
    (probe,) = flow.claim_gated("flow_breaker", "w", QUEUE, 10).tasks
    assert task_type("flow_breaker").circuit_state == CircuitState.HALF_OPEN
    assert flow.claim_gated("flow_breaker", "w", QUEUE, 10).tasks == []  # probe still running
    fail(probe)
    assert task_type("flow_breaker").circuit_state == CircuitState.OPEN
    assert circuit_events[-1].message == "circuit of flow_breaker opened again: its probe failed"

    # Next probe released (worker shut down): another probe goes; its success closes.
    TaskType.objects.filter(name="flow_breaker").update(
        circuit_opened_at=Now() - timedelta(seconds=2)
    )
    (probe,) = flow.claim_gated("flow_breaker", "w", QUEUE, 10).tasks
    assert store.release_tasks([probe]) == 1
    (probe,) = flow.claim_gated("flow_breaker", "w", QUEUE, 10).tasks
    assert store.complete_tasks([(probe, 1)]) == {probe.id}
    row = task_type("flow_breaker")
    assert (row.circuit_state, row.consecutive_failures, row.circuit_opened_at) == (
        CircuitState.CLOSED,
        0,
        None,
    )
    assert [(e.name, e.severity) for e in circuit_events][-1] == ("circuit_closed", "info")
    assert len(store.claim_due_tasks("w", QUEUE, 10)) == len(tasks) - 1  # main claim again


@pytest.mark.django_db
def test_a_success_resets_the_failure_count() -> None:
    register_types()
    taskqueue.enqueue_many([("flow_breaker", {"n": n}) for n in range(3)])
    fail(store.claim_due_tasks("w", QUEUE, 1)[0])
    fail(store.claim_due_tasks("w", QUEUE, 1)[0])
    assert task_type("flow_breaker").consecutive_failures == 2
    (task,) = store.claim_due_tasks("w", QUEUE, 1)
    store.complete_tasks([(task, 1)])
    fail(store.claim_due_tasks("w", QUEUE, 1)[0])
    row = task_type("flow_breaker")
    assert (row.circuit_state, row.consecutive_failures) == (CircuitState.CLOSED, 1)


@pytest.mark.django_db
def test_types_without_a_breaker_cost_no_query(django_assert_num_queries: Any) -> None:
    register_types()
    with django_assert_num_queries(0):
        flow.record_failure(USING, "flow_plain")
        flow.record_successes(USING, ["flow_plain", "noop", "not-registered"])


@pytest.mark.django_db
def test_registration_writes_the_handlers_controls() -> None:
    TaskType.objects.create(name="flow_plain", circuit_state=CircuitState.OPEN)
    register_types()
    rated, limited, breaker, plain = (
        task_type(name) for name in ("flow_rated", "flow_limited", "flow_breaker", "flow_plain")
    )
    assert (rated.rate_limit, rated.concurrency_limit) == ("10/s", None)
    assert (limited.rate_limit, limited.concurrency_limit) == ("", 2)
    assert (breaker.circuit_threshold, breaker.circuit_cooldown) == (3, 1.5)
    # No breaker any more: a circuit left open would never close, so it is closed.
    assert (plain.circuit_threshold, plain.circuit_state) == (None, CircuitState.CLOSED)


# --- the worker's gates ----------------------------------------------------------------------


@pytest.mark.django_db
def test_gates_wait_for_the_next_token_and_skip_drained_types() -> None:
    register_types()
    taskqueue.enqueue_many([("flow_rated", {"n": n}) for n in range(3)])
    gates = Gates(USING, poll_interval=60)
    assert len(gates.claim("w", QUEUE, 10)) == 2
    assert 0 < gates.seconds_until_next() <= 0.1
    assert gates.claim("w", QUEUE, 10) == []  # too early: not even tried
    wait_for(lambda: gates.seconds_until_next() == float("inf"), timeout=2, message="token")
    assert len(gates.claim("w", QUEUE, 10)) == 1
    # flow_limited had nothing due: it is left alone (for the poll interval) until woken.
    limited = taskqueue.enqueue("flow_limited", {"n": 1})
    assert gates.claim("w", QUEUE, 10) == []
    gates.woken()
    assert [task.id for task in gates.claim("w", QUEUE, 10)] == [limited.id]


# --- commands --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pause_and_resume_commands(capsys: Any) -> None:
    call_command("taskqueue_pause", "flow_plain", "flow_rated")
    assert "Paused: flow_plain, flow_rated." in capsys.readouterr().out
    # Rows made from the registry when no worker has registered the types yet.
    assert set(TaskType.objects.filter(paused=True).values_list("name", flat=True)) == {
        "flow_plain",
        "flow_rated",
    }
    assert task_type("flow_rated").rate_limit == "10/s"
    call_command("taskqueue_resume", "flow_plain", "noop")
    out = capsys.readouterr().out
    assert "Resumed: flow_plain." in out
    assert "Left alone, not paused: noop." in out
    assert set(TaskType.objects.filter(paused=True).values_list("name", flat=True)) == {
        "flow_rated"
    }


@pytest.mark.django_db
def test_commands_name_unknown_types_and_change_nothing() -> None:
    with pytest.raises(CommandError, match="unknown task type\\(s\\): nope, gone"):
        call_command("taskqueue_pause", "flow_plain", "nope", "gone")
    assert not TaskType.objects.exists()
    with pytest.raises(CommandError, match="unknown task type\\(s\\): nope"):
        call_command("taskqueue_resume", "nope")
    with pytest.raises(CommandError, match="the following arguments are required: TYPE"):
        call_command("taskqueue_pause")


# --- real workers ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_paused_tasks_wait_and_resume_runs_them(run_worker: Any) -> None:
    call_command("taskqueue_pause", "flow_plain")
    held = taskqueue.enqueue_many([("flow_plain", {"n": n}) for n in range(3)])
    other = taskqueue.enqueue("flow_marked", {"key": "flow:other"})
    result = run_worker("--burst", "--queues", "flow")
    assert Task.objects.get(pk=other.pk).status == TaskStatus.COMPLETED, result.stderr
    assert set(
        Task.objects.filter(pk__in=[t.pk for t in held]).values_list("status", "attempts")
    ) == {(TaskStatus.PENDING, 0)}
    call_command("taskqueue_resume", "flow_plain")
    result = run_worker("--burst", "--queues", "flow")
    assert set(Task.objects.values_list("status", flat=True)) == {TaskStatus.COMPLETED}


@pytest.mark.django_db(transaction=True)
def test_a_burst_worker_waits_for_rate_limited_work_instead_of_exiting(run_worker: Any) -> None:
    # 6 tasks at 10/s: the bucket holds about 2, so the rest are due but held back by the
    # limit when the first claims come back empty; --burst must wait for them, not exit.
    taskqueue.enqueue_many([("flow_rated", {"n": n}) for n in range(6)])
    result = run_worker("--burst", "--queues", "flow")
    assert result.returncode == 0, result.stderr
    assert set(Task.objects.values_list("status", flat=True)) == {TaskStatus.COMPLETED}


@pytest.mark.django_db(transaction=True)
def test_pause_lets_the_running_task_finish(start_worker: Any) -> None:
    running = taskqueue.enqueue("flow_marked", {"key": "flow:running", "seconds": 0.5})
    worker = start_worker("--queues", "flow")
    with worker_stderr_on_failure(worker):
        wait_for(lambda: Counter.objects.filter(key="flow:running").exists(), message="start")
        call_command("taskqueue_pause", "flow_marked")
        # Higher priority than the sentinel: had the worker claimed flow_marked, it would
        # have claimed this one before the sentinel.
        held = taskqueue.enqueue("flow_marked", {"key": "flow:held"}, priority="critical")
        sentinel = taskqueue.enqueue("flow_plain", {"n": 1})
        wait_for(
            lambda: (
                Task.objects.filter(
                    pk__in=[running.pk, sentinel.pk], status=TaskStatus.COMPLETED
                ).count()
                == 2
            ),
            message="the running task and the sentinel to complete",
        )
        assert Task.objects.filter(pk=held.pk, status=TaskStatus.PENDING, attempts=0).exists()
    stop(worker)


@pytest.mark.django_db(transaction=True)
def test_rate_limit_holds_across_two_workers(start_worker: Any) -> None:
    total = 40
    taskqueue.enqueue_many([("flow_rated", {"n": n}) for n in range(total)])
    workers = [start_worker("--queues", "flow", "--concurrency", "2") for _ in range(2)]
    with worker_stderr_on_failure(*workers):
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.COMPLETED).count() == total,
            timeout=30,
            message="every rate-limited task to complete",
        )
    stop(*workers)
    starts = sorted(Task.objects.values_list("started_at", flat=True))
    span = (starts[-1] - starts[0]).total_seconds()
    rate = (total - 1) / span
    by_worker = set(Task.objects.values_list("claimed_by", flat=True))
    print(f"\n{total} tasks over {span:.2f} s: {rate:.2f}/s by {len(by_worker)} workers")
    assert 9.0 <= rate <= 11.0, f"{rate:.2f} tasks/s for a limit of 10/s"
    # No second of the run started more than the limit plus the bucket (2 tokens at 10/s).
    for start in starts:
        in_second = sum(1 for s in starts if start <= s < start + timedelta(seconds=1))
        assert in_second <= 12, f"{in_second} tasks started within a second of {start}"


@pytest.mark.django_db(transaction=True)
def test_concurrency_limit_is_never_exceeded_across_two_workers(start_worker: Any) -> None:
    Counter.objects.create(key="flow:running")
    Counter.objects.create(key="flow:most")
    total = 10
    taskqueue.enqueue_many([("flow_limited", {"n": n, "seconds": 0.2}) for n in range(total)])
    workers = [start_worker("--queues", "flow", "--concurrency", "4") for _ in range(2)]
    with worker_stderr_on_failure(*workers):
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.COMPLETED).count() == total,
            timeout=30,
            message="every limited task to complete",
        )
    stop(*workers)
    # In the handlers: never more than 2 at once, and the limit was reached.
    assert Counter.objects.get(key="flow:most").value == 2
    # In the database: running intervals (claim to completion) never overlap more than 2.
    events = []
    for started, completed in Task.objects.values_list("started_at", "completed_at"):
        events += [(started, 1), (completed, -1)]
    running = most = 0
    for _, change in sorted(events):  # at the same instant an end sorts before a start
        running += change
        most = max(most, running)
    assert most <= 2, f"{most} tasks of a type limited to 2 were running at once"


@pytest.mark.django_db(transaction=True)
def test_breaker_opens_holds_and_closes_with_a_real_worker(start_worker: Any) -> None:
    cooldown = timedelta(seconds=1.5)
    taskqueue.enqueue_many([("flow_breaker", {"n": n}) for n in range(4)])
    worker = start_worker("--queues", "flow", "--concurrency", "1")
    with worker_stderr_on_failure(worker):
        first_open = wait_for(
            lambda: (
                TaskType.objects.filter(name="flow_breaker", circuit_state=CircuitState.OPEN)
                .values_list("circuit_opened_at", flat=True)
                .first()
            ),
            message="the circuit to open",
        )
        # The probe after the cool-down fails: the circuit opens again.
        second_open = wait_for(
            lambda: (
                TaskType.objects.filter(
                    name="flow_breaker",
                    circuit_state=CircuitState.OPEN,
                    circuit_opened_at__gt=first_open,
                )
                .values_list("circuit_opened_at", flat=True)
                .first()
            ),
            message="the failed probe to reopen the circuit",
        )
        Counter.objects.create(key="flow:healthy")
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.COMPLETED).count() == 4,
            message="the circuit to close and every task to complete",
        )
    stop(worker)
    # While open, nothing was claimed: the only attempt between the two openings is the
    # probe, claimed once the cool-down was over.
    probes = list(
        TaskAttempt.objects.filter(started_at__gt=first_open, started_at__lte=second_open)
    )
    assert len(probes) == 1, probes
    assert probes[0].started_at >= first_open + cooldown
    # The probe that closed it also waited for the cool-down, and went alone.
    after = sorted(
        Task.objects.filter(started_at__gt=second_open).values_list("started_at", flat=True)
    )
    assert after[0] >= second_open + cooldown
    assert task_type("flow_breaker").circuit_state == CircuitState.CLOSED
    _, _, log = finish_worker(worker)
    assert "circuit of flow_breaker opened after 3 failures in a row" in log
    assert "circuit of flow_breaker opened again: its probe failed" in log
