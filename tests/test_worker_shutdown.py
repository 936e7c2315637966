"""SIGTERM and SIGINT on a real ``run_worker``: finish or release, never leave tasks running."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import taskqueue
from taskqueue.models import Task, TaskStatus, Worker, WorkerStatus
from tests.conftest import finish_worker, wait_for, worker_stderr_on_failure
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def handler_started(key: str) -> bool:
    # marked_sleep writes this row as its first act: the handler is running, not just claimed.
    return Counter.objects.filter(key=key).exists()


def claimed(task: Task) -> bool:
    return Task.objects.filter(id=task.id, status=TaskStatus.RUNNING).exists()


def state(task: Task) -> tuple[str, int, str | None]:
    task.refresh_from_db()
    return task.status, task.attempts, task.claimed_by


def start_with_tasks_in_hand(
    start_worker, seconds: float, *worker_args: str
) -> tuple[subprocess.Popen[str], Task, Task]:
    """Start a worker holding two tasks: one running, one claimed ahead and not started.

    Concurrency 1 claims two at once; the high-priority task runs first.
    """
    running = taskqueue.enqueue(
        "marked_sleep", {"key": "running", "seconds": seconds}, priority="high"
    )
    prefetched = taskqueue.enqueue("sleepy", {"seconds": seconds}, priority="low")
    process = start_worker("--queues", "slow", "--concurrency", "1", *worker_args)
    with worker_stderr_on_failure(process):
        wait_for(lambda: handler_started("running"), timeout=15, message="the handler to start")
        wait_for(lambda: claimed(prefetched), timeout=5, message="the second task's claim")
    return process, running, prefetched


def released(task: Task) -> bool:
    return state(task) == (TaskStatus.PENDING, 0, None)


def stop(process: subprocess.Popen[str], *signums: int, timeout: float) -> tuple[float, str]:
    """Send the signals in a row; return how long the worker took to exit, and its stderr."""
    sent_at = time.monotonic()
    for signum in signums:
        process.send_signal(signum)
    code, _, stderr = finish_worker(process, timeout=timeout)
    assert code == 0, f"worker exited {code}:\n{stderr}"
    return time.monotonic() - sent_at, stderr


def test_sigterm_finishes_the_running_task_and_releases_the_prefetched_one(start_worker):
    process, running, prefetched = start_with_tasks_in_hand(start_worker, 1.5)

    _, stderr = stop(process, signal.SIGTERM, timeout=20)

    assert state(running)[:2] == (TaskStatus.COMPLETED, 1), stderr
    assert released(prefetched), (state(prefetched), stderr)
    assert not Task.objects.running().exists(), stderr


def test_sigterm_releases_a_task_that_outlives_the_shutdown_timeout(start_worker):
    process, running, prefetched = start_with_tasks_in_hand(
        start_worker, 30, "--shutdown-timeout", "0.5"
    )

    took, stderr = stop(process, signal.SIGTERM, timeout=15)

    assert took < 5, f"exit took {took:.1f} s:\n{stderr}"
    assert released(running), (state(running), stderr)
    assert running.lease_id is None and running.started_at is None
    assert released(prefetched), (state(prefetched), stderr)
    assert not Task.objects.running().exists(), stderr


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_stops_at_once_and_still_releases(start_worker, second):
    # Without the second signal the worker would wait out its 10 s shutdown timeout.
    process, running, prefetched = start_with_tasks_in_hand(
        start_worker, 30, "--shutdown-timeout", "10"
    )
    process.send_signal(signal.SIGTERM)
    # Two identical signals sent back to back reach the handler as one (both the kernel and
    # Python merge a pending signal), so wait for the first one's visible effect: the task
    # claimed ahead is released at once.
    with worker_stderr_on_failure(process):
        wait_for(lambda: released(prefetched), timeout=5, message="the first signal's release")

    took, stderr = stop(process, second, timeout=15)

    assert took < 5, f"exit took {took:.1f} s after the second signal:\n{stderr}"
    assert released(running), (state(running), stderr)
    assert not Task.objects.running().exists(), stderr


def test_a_burst_of_signals_exits_cleanly(start_worker):
    process, running, prefetched = start_with_tasks_in_hand(start_worker, 30)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM]

    took, stderr = stop(process, *signals, timeout=15)

    assert "Traceback" not in stderr, stderr
    assert took < 5, f"exit took {took:.1f} s:\n{stderr}"
    assert released(running), (state(running), stderr)
    assert released(prefetched), (state(prefetched), stderr)
    assert not Task.objects.running().exists(), stderr


def worker_status(process: subprocess.Popen[str]) -> str | None:
    return Worker.objects.filter(pid=process.pid).values_list("status", flat=True).first()


def test_a_draining_worker_is_stopping_until_it_has_stopped(start_worker):
    process, running, _ = start_with_tasks_in_hand(start_worker, 30, "--shutdown-timeout", "20")
    assert worker_status(process) == WorkerStatus.RUNNING

    process.send_signal(signal.SIGTERM)
    with worker_stderr_on_failure(process):
        wait_for(
            lambda: worker_status(process) == WorkerStatus.STOPPING,
            timeout=5,
            message="the worker's row to say stopping",
        )
    # Still draining: the task it holds is running, and heartbeats keep it stopping.
    assert claimed(running)
    assert worker_status(process) == WorkerStatus.STOPPING

    _, stderr = stop(process, signal.SIGTERM, timeout=15)

    assert worker_status(process) == WorkerStatus.STOPPED, stderr
    assert released(running), (state(running), stderr)
