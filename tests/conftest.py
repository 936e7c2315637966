"""Shared fixtures: real databases, real worker subprocesses, and polling with deadlines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if connection.vendor != "postgresql":
        skip = pytest.mark.skip(reason="needs PostgreSQL (run with TASKQUEUE_TEST_DB=postgres)")
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip)


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str = "condition",
) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)  # polling interval of the wait loop, not synchronisation


def worker_env() -> dict[str, str]:
    """Environment for a worker subprocess that talks to this test run's database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["TASKQUEUE_TEST_DB"] = "postgres" if connection.vendor == "postgresql" else "sqlite"
    env["TASKQUEUE_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", "run_worker", *args]


@pytest.fixture
def run_worker(transactional_db: None) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run ``manage.py run_worker`` to completion in a real subprocess (use with --burst)."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            worker_command(*args),
            env=worker_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"worker exited {result.returncode}:\n{result.stderr}"
        return result

    yield run


@pytest.fixture
def start_worker(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start long-running worker subprocesses; any left running are killed at teardown.

    Their output goes to files, not pipes: a pipe nobody reads fills up during a noisy
    outage and blocks the worker's logging threads (heartbeats stop, and it is taken for
    dead). ``finish_worker`` and ``worker_stderr_on_failure`` read the files.
    """
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log_path = tmp_path / f"worker-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                worker_command(*args),
                env={**worker_env(), **(extra_env or {})},
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _output(process: subprocess.Popen[str]) -> str:
    """What a worker started by ``start_worker`` has written so far."""
    return process.log_path.read_text()  # type: ignore[attr-defined]


def finish_worker(process: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str, str]:
    """Wait for a worker subprocess to exit; return its exit code, stdout and stderr.

    For workers from ``start_worker`` both streams go to one file, returned as stderr.
    """
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise AssertionError(
            f"worker did not exit within {timeout} s:\n{_output(process)}"
        ) from None
    return process.returncode, "", _output(process)


@contextmanager
def worker_stderr_on_failure(*processes: subprocess.Popen[str]) -> Iterator[None]:
    """On a failed assertion, stop the given workers and add their stderr to the message."""
    try:
        yield
    except AssertionError as exc:
        reports = []
        for process in processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=10)
                stderr = _output(process)
            except (OSError, subprocess.TimeoutExpired) as error:
                stderr = f"(unavailable: {error})"
            reports.append(f"--- stderr of worker {process.pid} ---\n{stderr}")
        raise AssertionError("\n".join([str(exc), *reports])) from exc


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-nightly",
        action="store_true",
        help="Run the nightly kill -9 chaos test (long: 100,000 tasks by default).",
    )
    parser.addoption(
        "--chaos-nightly-tasks",
        type=int,
        default=100_000,
        metavar="TASKS",
        help="Tasks in the nightly chaos test (default 100,000).",
    )
