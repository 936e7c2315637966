"""Real ``manage.py run_worker`` subprocesses: start, wait with resource usage, read memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.database import REPO_ROOT

MANAGE_PY = REPO_ROOT / "manage.py"
# How often the benchmark looks at a condition it waits for (seconds): polling, not pacing.
POLL_EVERY = 0.01


class BenchError(RuntimeError):
    """A measurement could not be taken (a worker failed, a deadline passed)."""


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Exit:
    returncode: int
    peak_rss_mib: float
    cpu_user: float
    cpu_system: float


def start_worker(log_dir: Path, name: str, *args: str) -> WorkerProcess:
    """Start ``manage.py run_worker ARGS`` with the benchmark's settings; output to a log file."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), "run_worker", *args],
            cwd=REPO_ROOT,
            env=dict(os.environ),  # bench.database.configure put the settings there
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(process, log_path)


def wait_for_exit(worker: WorkerProcess, timeout: float) -> Exit:
    """Reap the worker and return its exit code, peak RSS and CPU time; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    peak = 0.0
    while True:
        # Sample VmHWM while the process lives: wait4's ru_maxrss would also count the
        # benchmark's own pages, which the child shares between fork and exec.
        try:
            peak = max(peak, memory_mib(worker.pid))
        except (OSError, BenchError):
            pass  # exiting: its memory is gone from /proc, the last sample stands
        pid, status, usage = os.wait4(worker.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            worker.process.kill()
            worker.process.wait()
            raise BenchError(
                f"worker {worker.pid} still running after {timeout:.0f} s:\n{worker.log_tail()}"
            )
        time.sleep(POLL_EVERY)
    worker.process.returncode = os.waitstatus_to_exitcode(status)
    return Exit(
        returncode=worker.process.returncode,
        peak_rss_mib=peak,
        cpu_user=usage.ru_utime,
        cpu_system=usage.ru_stime,
    )


def require_clean_exit(worker: WorkerProcess, result: Exit) -> None:
    if result.returncode != 0:
        raise BenchError(f"worker {worker.pid} exited {result.returncode}:\n{worker.log_tail()}")


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    """A memory figure of a live process from /proc/PID/status (VmHWM is its peak RSS), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                kib = int(line.split()[1])
                return kib / 1024
    raise BenchError(f"/proc/{pid}/status has no {field}")


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    message: str,
    worker: WorkerProcess | None = None,
) -> object:
    """Poll ``condition`` until it is truthy; raise after ``timeout`` or if ``worker`` died."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if worker is not None and worker.process.poll() is not None:
            raise BenchError(
                f"worker exited {worker.process.returncode} while waiting for {message}:\n"
                f"{worker.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {message}")
        time.sleep(POLL_EVERY)
