"""Kill -9 chaos: at-least-once execution, nothing lost, nothing stuck, duplicates explained.

Workers are SIGKILLed at random while they run thousands of tasks. Every execution is
counted in a ledger written on a connection of its own, so executions whose outcome died
with their worker are counted too. The promise checked: every task completes, none is left
running or waiting, and every task that ran more than once did so because a worker running
it was killed.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

import taskqueue
from taskqueue.models import AttemptOutcome, Task, TaskAttempt, TaskStatus, Worker, WorkerStatus
from tests.chaos import Crew, LedgerRow, create_ledger, drop_ledger, is_running, read_ledger
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ENQUEUE_BATCH = 5_000


@dataclass(frozen=True)
class Scenario:
    tasks: int
    workers: int
    concurrency: int
    work_ms: float  # the handler's own work per task
    kill_every: float  # seconds between kills
    deadline: float  # seconds for every task to complete, kills included


def regular_scenario() -> Scenario:
    # Two handler processes per worker: every replacement spawns its own, and on a small
    # machine those start-ups, not the tasks, set the pace of a run.
    if connection.vendor == "postgresql":
        return Scenario(
            tasks=10_000, workers=3, concurrency=2, work_ms=3, kill_every=2, deadline=240
        )
    # SQLite has a single writer: fewer tasks and workers, the same kills.
    return Scenario(tasks=5_000, workers=2, concurrency=2, work_ms=3, kill_every=2, deadline=240)


def nightly_scenario(tasks: int) -> Scenario:
    workers = 3 if connection.vendor == "postgresql" else 2
    # 100,000 tasks took 23 minutes on 2 busy cores (14 ms a task): allow about twice that.
    return Scenario(
        tasks, workers, concurrency=2, work_ms=3, kill_every=2, deadline=120 + tasks / 40
    )


@pytest.fixture
def ledger() -> Iterator[None]:
    create_ledger()
    yield
    drop_ledger()


@pytest.fixture
def make_crew(tmp_path: Path) -> Iterator[Callable[[Scenario], Crew]]:
    crews: list[Crew] = []

    def make(scenario: Scenario) -> Crew:
        crew = Crew(tmp_path, ("--concurrency", str(scenario.concurrency)))
        crews.append(crew)
        return crew

    yield make
    for crew in crews:
        crew.close()


@dataclass(frozen=True)
class ChaosRun:
    kills: int
    seconds: float


def _status_counts() -> dict[str, int]:
    return dict(Counter(Task.objects.values_list("status", flat=True)))


def _settled() -> bool:
    """True once no task is left to run (completed, or lost to the dead-letter state)."""
    # Two queries that each read one small partial index, however long the history grows.
    return not (Task.objects.ready().exists() or Task.objects.running().exists())


def _enqueue(scenario: Scenario) -> None:
    for start in range(0, scenario.tasks, ENQUEUE_BATCH):
        stop = min(start + ENQUEUE_BATCH, scenario.tasks)
        taskqueue.enqueue_many(
            [("chaos_ledger", {"n": n, "work_ms": scenario.work_ms}) for n in range(start, stop)]
        )


def _run_chaos(scenario: Scenario, crew: Crew) -> ChaosRun:
    """Kill a random worker every ``kill_every`` s, replacing it, until every task settled."""
    _enqueue(scenario)
    for _ in range(scenario.workers):
        crew.start()
    began = time.monotonic()
    kills = 0
    while True:
        next_kill = time.monotonic() + scenario.kill_every
        wait_for(
            lambda due=next_kill: crew.crashed() or _settled() or time.monotonic() >= due,
            timeout=scenario.kill_every + 60,
            interval=0.25,
            message="the next kill",
        )
        assert not crew.crashed(), (
            f"workers exited unasked: {[m.worker_id for m in crew.crashed()]}\n"
            + crew.stderr_report()
        )
        if _settled():
            return ChaosRun(kills, time.monotonic() - began)
        elapsed = time.monotonic() - began
        assert elapsed < scenario.deadline, (
            f"not settled after {elapsed:.0f} s and {kills} kills: {_status_counts()}\n"
            + crew.stderr_report()
        )
        victim, children = crew.kill_one()
        kills += 1
        wait_for(
            lambda pids=children: not [pid for pid in pids if is_running(pid)],
            timeout=10,
            message=f"the handler processes of {victim.worker_id} to die with it",
        )
        crew.start()


def _check_ledger(scenario: Scenario, rows: list[LedgerRow], killed: set[str]) -> int:
    """Assert every task ran, and ran again only after a kill; return how many ran again."""
    rows_by_n: dict[int, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        rows_by_n[row.n].append(row)
    assert set(rows_by_n) == set(range(scenario.tasks)), "tasks completed without running"
    untraced: list[list[LedgerRow]] = []
    disagreeing: list[tuple[LedgerRow, object, int]] = []
    duplicated = 0
    for n, result, attempts in Task.objects.values_list("payload__n", "result", "attempts"):
        executions = sorted(rows_by_n[n], key=lambda row: row.attempt)
        *earlier, last = executions
        # The last execution is the one that completed: the task's result and attempt say so.
        if result != {"worker": last.worker, "attempt": last.attempt} or last.attempt != attempts:
            disagreeing.append((last, result, attempts))
        duplicated += bool(earlier)
        repeated_attempt = len({row.attempt for row in executions}) != len(executions)
        if repeated_attempt or any(row.worker not in killed for row in earlier):
            untraced.append(executions)
    assert not disagreeing, f"(last execution, result, attempts) disagree: {disagreeing[:10]}"
    assert not untraced, (
        f"{len(untraced)} task(s) ran more than once without a kill to explain it "
        f"(killed: {sorted(killed)}): {untraced[:10]}"
    )
    return duplicated


def _check_lost_attempts(killed: set[str]) -> int:
    """Assert every failed attempt was lost with a killed worker; return how many were."""
    attempts = list(TaskAttempt.objects.values_list("outcome", "worker_id"))
    outcomes = Counter(outcome for outcome, _ in attempts)
    assert set(outcomes) <= {AttemptOutcome.WORKER_LOST}, f"attempts that failed: {outcomes}"
    presumed_dead = {worker for _, worker in attempts}
    assert presumed_dead <= killed, f"live workers presumed dead: {presumed_dead - killed}"
    return len(attempts)


def _stop_survivors(crew: Crew, rows: list[LedgerRow]) -> None:
    """SIGTERM the workers left: they exit 0, and every process that ran a task is gone."""
    # A worker signalled before it has set up stops like any process: wait until it has.
    survivors = [member.worker_id for member in crew.live()]
    wait_for(
        lambda: (
            Worker.objects.filter(id__in=survivors, status=WorkerStatus.RUNNING).count()
            == len(survivors)
        ),
        message="the survivors to register",
    )
    codes = crew.stop()
    assert set(codes.values()) == {0}, f"survivors' exit codes: {codes}\n" + crew.stderr_report()
    wait_for(
        lambda: not [pid for pid in {row.pid for row in rows} if is_running(pid)],
        timeout=10,
        message="every process that ran a task to be gone",
    )


def _check_promise(scenario: Scenario, crew: Crew, run: ChaosRun) -> None:
    """Assert at-least-once with nothing lost or stuck and every duplicate traced to a kill."""
    statuses = _status_counts()
    assert statuses == {TaskStatus.COMPLETED: scenario.tasks}, f"lost or stuck tasks: {statuses}"
    # Traced by worker id: handlers run in child processes, the kill hits their worker.
    killed = {member.worker_id for member in crew.killed}
    rows = read_ledger()
    duplicated = _check_ledger(scenario, rows, killed)
    lost = _check_lost_attempts(killed)
    # Otherwise the run proved nothing: the kills must have hit tasks in hand.
    assert run.kills >= 3 and lost, f"{run.kills} kills, {lost} attempts lost"
    print(
        f"\nchaos ({connection.vendor}): {scenario.tasks} tasks, {scenario.workers} workers x "
        f"{scenario.concurrency}, {run.kills} kills in {run.seconds:.1f} s; {len(rows)} "
        f"executions in {len({row.pid for row in rows})} processes, {duplicated} task(s) "
        f"run more than once ({len(rows) - scenario.tasks} extra executions), {lost} "
        "attempt(s) lost with their worker"
    )
    _stop_survivors(crew, rows)


def test_kill9_chaos_loses_nothing_and_explains_every_duplicate(ledger, make_crew) -> None:
    scenario = regular_scenario()
    crew = make_crew(scenario)
    run = _run_chaos(scenario, crew)
    _check_promise(scenario, crew, run)


def test_nightly_kill9_chaos(ledger, make_crew, request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--chaos-nightly"):
        pytest.skip("nightly: run with --chaos-nightly [--chaos-nightly-tasks N]")
    scenario = nightly_scenario(request.config.getoption("--chaos-nightly-tasks"))
    crew = make_crew(scenario)
    run = _run_chaos(scenario, crew)
    _check_promise(scenario, crew, run)
