"""PostgreSQL restarted under running workers: they reconnect, resume, and lose nothing.

This module RESTARTS THE WHOLE POSTGRESQL SERVER (``pg_ctlcluster ... restart``, which
needs root and a Debian-style cluster on this machine). Every session on the server loses
its connection, including those of any other test run going on at the same time, so run
it on a machine of your own (``-m "not slow"`` leaves it out). The server is started again
at the end even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

import taskqueue
from taskqueue.models import Task, TaskStatus
from tests.conftest import wait_for
from tests.test_outages import (
    LISTEN_WARNING,
    LOOP_WARNING,
    all_done_while_alive,
    assert_ran_once_per_claim_at_most,
    completed_count,
    logs_on_failure,
    start_logged_worker_fixture,  # noqa: F401 (provides the start_logged_worker fixture)
    stop_all,
)

CLUSTERS = Path("/etc/postgresql")

pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.slow,
    # Restarting the server breaks every other test's connection: run alone.
    pytest.mark.serial,
    pytest.mark.django_db(transaction=True),
]

CAN_RESTART = shutil.which("pg_ctlcluster") is not None and CLUSTERS.is_dir() and os.geteuid() == 0


@pytest.fixture(autouse=True)
def _restart_possible() -> None:
    """Skip where the server cannot be restarted from here, but never silently in CI."""
    if CAN_RESTART:
        return
    reason = "restarting PostgreSQL needs root and pg_ctlcluster"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the restart scenario")
    pytest.skip(reason)


TASKS = 2000
# The claim loop backs off up to 5 s between reconnection attempts: it must be working
# again within that of the server taking connections (plus slack for a busy machine).
RESUME_WITHIN = 7.0


def pg_ctlcluster(action: str) -> None:
    (version,) = [entry.name for entry in CLUSTERS.iterdir()]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def server_ready() -> bool:
    settings = connection.settings_dict
    probe = ["pg_isready", "-q", "-h", settings["HOST"], "-p", str(settings["PORT"])]
    return subprocess.run(probe, check=False, timeout=30).returncode == 0


def listening_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN taskqueue' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def restart_server() -> tuple[float, float]:
    """Restart PostgreSQL; return when it went down and when it was back (monotonic)."""
    went_down = time.monotonic()
    pg_ctlcluster("restart")
    wait_for(server_ready, timeout=60, interval=0.1, message="PostgreSQL to accept connections")
    back = time.monotonic()
    connection.close()  # this test's own session died with the old server
    return went_down, back


def test_workers_ride_out_a_postgresql_restart(start_logged_worker):
    taskqueue.enqueue_many([("ledger", {"n": n}) for n in range(TASKS)])
    workers = [start_logged_worker("--concurrency", "4") for _ in range(2)]
    try:
        with logs_on_failure(*workers):
            wait_for(lambda: completed_count() >= TASKS // 10, timeout=60, message="a tenth done")
            went_down, back = restart_server()
            done_at_restart = completed_count()
            wait_for(
                lambda: completed_count() > done_at_restart,
                timeout=30,
                message="the workers to complete tasks again",
            )
            resumed_after = time.monotonic() - back
            wait_for(
                lambda: all_done_while_alive(workers, TASKS),
                timeout=60,
                message="every task to complete",
            )
            print(
                f"\nserver down for {back - went_down:.1f} s with {done_at_restart} of {TASKS} "
                f"done; work resumed {resumed_after:.1f} s after it was back; all done "
                f"{time.monotonic() - back:.1f} s after"
            )
            assert resumed_after < RESUME_WITHIN
            wait_for(
                lambda: listening_sessions() == len(workers),
                timeout=10,
                message="every worker to LISTEN again",
            )
            # 'ledger' keeps the default 3 attempts: an outage must not use them all up.
            assert not Task.objects.exclude(status=TaskStatus.COMPLETED).exists()
            assert_ran_once_per_claim_at_most(TASKS)
            logs = stop_all(workers)
    finally:
        if not server_ready():
            pg_ctlcluster("start")
            wait_for(server_ready, timeout=60, interval=0.1, message="PostgreSQL to start")
        connection.close()

    outage = back - went_down + resumed_after
    for worker, stderr in zip(workers, logs, strict=True):
        loop_warnings = sum(line.startswith(LOOP_WARNING) for line in stderr.splitlines())
        print(
            f"worker {worker.pid}: {loop_warnings} '{LOOP_WARNING}', "
            f"{stderr.count(LISTEN_WARNING)} '{LISTEN_WARNING}' and "
            f"{stderr.count('worker duty')} 'worker duty ... failed' lines"
        )
        # Capped exponential backoff: a handful of lines per outage, not one per try of a
        # spinning loop.
        assert 1 <= loop_warnings <= 3 * outage + 2, stderr[-5000:]
        assert 1 <= stderr.count(LISTEN_WARNING) <= 3 * outage + 2, stderr[-5000:]
    assert not Task.objects.running().exists()
