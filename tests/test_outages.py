"""Database outages under real workers: backends terminated from the server, LISTEN regained.

PostgreSQL only. The tests kill the workers' connections with ``pg_terminate_backend``,
limited to client backends of this run's test database (never this test's own session), so
other sessions on the shared server are left alone. The restart of the whole server lives
in tests/test_outages_restart.py, which shares the helpers here.

Workers here log to files, not to the pipes of the ``start_worker`` fixture: through an
outage a worker logs a lot (a traceback per failed duty), and once a pipe nobody reads
holds 64 KB every thread that logs blocks, which looks just like a worker that hangs.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

import taskqueue
from taskqueue.models import Task, TaskAttempt, TaskStatus
from tests.conftest import REPO_ROOT, wait_for, worker_command, worker_env
from tests.testapp.models import LedgerEntry

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]

TASKS = 3000
CHAOS_RHYTHM = 0.3  # seconds between terminate rounds
# The claim loop's line (the side duties log their own, "worker duty ...: database ...").
LOOP_WARNING = "database unavailable"
LISTEN_WARNING = "lost the LISTEN connection"


@dataclass
class LoggedWorker:
    """A ``run_worker`` subprocess whose stderr goes to a file."""

    process: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the worker to exit; return its exit code and everything it logged."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(
                f"worker {self.pid} did not exit within {timeout} s:\n{self.stderr()[-5000:]}"
            ) from None
        return code, self.stderr()


@pytest.fixture(name="start_logged_worker")
def start_logged_worker_fixture(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., LoggedWorker]]:
    """Start long-running workers logging to files; any left running are killed at teardown."""
    started: list[LoggedWorker] = []

    def start(*args: str) -> LoggedWorker:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("w") as stream:
            process = subprocess.Popen(
                worker_command(*args),
                env=worker_env(),
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stream,
                text=True,
            )
        started.append(LoggedWorker(process, log))
        return started[-1]

    yield start
    for worker in started:
        if worker.alive():
            worker.process.kill()
        worker.process.wait(30)


@contextmanager
def logs_on_failure(*workers: LoggedWorker) -> Iterator[None]:
    """On a failed assertion, kill the workers and add the end of their logs to the message."""
    try:
        yield
    except AssertionError as exc:
        for worker in workers:
            if worker.alive():
                worker.process.kill()
        logs = [f"--- end of the log of worker {w.pid} ---\n{w.stderr()[-8000:]}" for w in workers]
        raise AssertionError("\n".join([str(exc), *logs])) from exc


def assert_alive(*workers: LoggedWorker) -> None:
    dead = {worker.pid: worker.process.returncode for worker in workers if not worker.alive()}
    assert not dead, f"workers exited during the outage (pid: exit code): {dead}"


def stop_all(workers: list[LoggedWorker]) -> list[str]:
    """SIGTERM every worker; check each exits 0; return their logs."""
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    logs = []
    for worker in workers:
        code, stderr = worker.finish()
        assert code == 0, stderr[-5000:]
        logs.append(stderr)
    return logs


def terminate_worker_backends() -> int:
    """Terminate every client session of the test database but this one; return how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def listener_pid() -> int | None:
    """The backend pid of the worker session sitting in LISTEN, if there is one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN taskqueue' AND pid <> pg_backend_pid()"
        )
        row = cursor.fetchone()
    return row[0] if row else None


def terminate_backend(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def new_listener(old_pid: int) -> int | None:
    """The pid of a LISTEN session that replaced ``old_pid``, once there is one."""
    pid = listener_pid()
    return pid if pid not in (None, old_pid) else None


def completed_count() -> int:
    return Task.objects.filter(status=TaskStatus.COMPLETED).count()


def terminate_until_half_done(workers: list[LoggedWorker]) -> tuple[int, int, float]:
    """Kill the workers' sessions every CHAOS_RHYTHM s until half the tasks are done.

    Returns the rounds, the sessions killed and how long the chaos lasted.
    """
    started = time.monotonic()
    deadline = started + 120
    rounds = killed = 0
    pause = threading.Event()  # never set: a bounded wait that sets the chaos rhythm
    while completed_count() < TASKS // 2:
        assert time.monotonic() < deadline, f"only {completed_count()} done after {rounds} rounds"
        assert_alive(*workers)
        killed += terminate_worker_backends()
        rounds += 1
        pause.wait(CHAOS_RHYTHM)
    return rounds, killed, time.monotonic() - started


def all_done_while_alive(workers: list[LoggedWorker], total: int) -> bool:
    assert_alive(*workers)
    return completed_count() == total


def assert_ran_once_per_claim_at_most(total: int) -> None:
    """Every task ran; none ran more often than claimed; every cut attempt is on record."""
    executions = Tally(LedgerEntry.objects.values_list("n", flat=True))
    assert set(executions) == set(range(total)), "some tasks never ran"
    tasks = {task.payload["n"]: task for task in Task.objects.only("id", "payload", "attempts")}
    # A task runs again only after an attempt that was cut (its connection killed, or its
    # worker presumed lost), and every attempt is a claim: never more runs than attempts.
    overrun = {
        n: (runs, tasks[n].attempts) for n, runs in executions.items() if runs > tasks[n].attempts
    }
    assert not overrun, f"tasks run more often than claimed (n: runs, attempts): {overrun}"
    # Each attempt before the successful one left its failure row: no outcome went unwritten.
    recorded = Tally(TaskAttempt.objects.values_list("task_id", flat=True))
    unrecorded = [n for n, task in tasks.items() if recorded[task.id] != task.attempts - 1]
    assert not unrecorded, f"tasks whose failed attempts are not all on record: {unrecorded}"
    duplicated = sorted(n for n, runs in executions.items() if runs > 1)
    spent = Tally(task.attempts for task in tasks.values())
    print(f"tasks by attempts used: {dict(sorted(spent.items()))}; ran twice or more: {duplicated}")
    cut = Tally(TaskAttempt.objects.values_list("outcome", "error_type"))
    print(f"attempts that did not succeed (outcome, error type): {dict(cut)}")


def test_workers_survive_their_connections_being_terminated_over_and_over(start_logged_worker):
    taskqueue.enqueue_many([("patient_ledger", {"n": n}) for n in range(TASKS)])
    workers = [start_logged_worker("--concurrency", "4") for _ in range(2)]
    with logs_on_failure(*workers):
        wait_for(completed_count, timeout=30, message="the workers to start working")
        rounds, killed, chaos_seconds = terminate_until_half_done(workers)
        calm_from = time.monotonic()
        wait_for(
            lambda: all_done_while_alive(workers, TASKS),
            timeout=60,
            message="every task to complete",
        )
        print(
            f"\n{rounds} terminate rounds over {chaos_seconds:.1f} s killed {killed} sessions; "
            f"the rest finished {time.monotonic() - calm_from:.1f} s after the last round"
        )
        assert killed >= rounds  # each round found worker sessions to kill
        assert not Task.objects.exclude(status=TaskStatus.COMPLETED).exists()
        assert_ran_once_per_claim_at_most(TASKS)
        logs = stop_all(workers)

    for worker, stderr in zip(workers, logs, strict=True):
        loop_warnings = sum(line.startswith(LOOP_WARNING) for line in stderr.splitlines())
        listen_warnings = stderr.count(LISTEN_WARNING)
        print(
            f"worker {worker.pid}: {loop_warnings} '{LOOP_WARNING}' and "
            f"{listen_warnings} '{LISTEN_WARNING}' lines"
        )
        # One lost connection costs one warning and one short backoff: a worker spinning on
        # a dead connection would log far more lines than there were terminate rounds.
        assert 1 <= loop_warnings <= rounds + 2, stderr[-5000:]
        assert 1 <= listen_warnings <= rounds + 2, stderr[-5000:]
    assert not Task.objects.running().exists()


def test_notify_wakes_the_worker_again_after_its_listen_connection_is_killed(
    start_logged_worker,
):
    worker = start_logged_worker("--poll-interval", "30")
    with logs_on_failure(worker):
        first = wait_for(listener_pid, timeout=15, message="the worker to LISTEN")
        warm_up = taskqueue.enqueue("noop", {})
        wait_for(
            lambda: Task.objects.filter(id=warm_up.id, status=TaskStatus.COMPLETED).exists(),
            timeout=5,
            message="the warm-up task",
        )
        assert terminate_worker_backends() >= 2  # the LISTEN session and the claim loop's
        wait_for(lambda: new_listener(first), timeout=10, message="the worker to LISTEN again")
        enqueued_at = time.monotonic()
        task = taskqueue.enqueue("add", {"a": 1, "b": 1})
        # Polling alone would take up to 30 s: only a NOTIFY gets the task done this soon.
        wait_for(
            lambda: Task.objects.filter(id=task.id, status=TaskStatus.COMPLETED).exists(),
            timeout=3,
            message="the task enqueued after the reconnect",
        )
        print(f"\npicked up and completed in {time.monotonic() - enqueued_at:.3f} s")
        (stderr,) = stop_all([worker])
    assert stderr.count(LISTEN_WARNING) == 1, stderr


def test_listen_is_regained_at_once_after_each_of_many_lost_connections(start_logged_worker):
    worker = start_logged_worker("--poll-interval", "30")
    with logs_on_failure(worker):
        pid = wait_for(listener_pid, timeout=15, message="the worker to LISTEN")
        gaps = []
        # The database stays up: each reconnect should come after the shortest backoff,
        # however many connections the worker lost before (a worker lives through many).
        for _ in range(6):
            terminate_backend(pid)
            killed_at = time.monotonic()
            pid = wait_for(lambda old=pid: new_listener(old), timeout=15, message="a new LISTEN")
            gaps.append(round(time.monotonic() - killed_at, 2))
        print(f"\nseconds to LISTEN again after each kill: {gaps}")
        assert max(gaps) < 2.0, gaps
        stop_all([worker])
