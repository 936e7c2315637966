"""Profile one burst worker on no-op tasks: CPU split, statements per task, hot spots.

Run from the repository root (about 30 s; needs py-spy for the hot spots:
``.venv/bin/pip install py-spy``):

    .venv/bin/python bench/profile_worker.py
    .venv/bin/python bench/profile_worker.py --tasks 10000 --concurrency 16 --no-py-spy

It recreates the benchmark database like ``bench/run.py`` (same ``--database-url`` and
``--sqlite`` options), preloads the tasks, runs ``manage.py run_worker --burst`` with a
statement counter installed, samples it with ``py-spy record``, and prints what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # see bench/run.py

from bench import database, machine  # noqa: E402
from bench.stacks import StackProfile  # noqa: E402
from bench.workers import (  # noqa: E402
    BenchError,
    require_clean_exit,
    start_worker,
    wait_for_exit,
    wait_until,
)

# How often the backend CPU sampler reads /proc (seconds).
SAMPLE_EVERY = 0.02


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Profile a burst worker on no-op tasks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="postgres://user:password@host:port/name")
    where.add_argument("--sqlite", metavar="PATH", help="run on this SQLite file instead")
    parser.add_argument("--tasks", type=int, default=20000, help="no-op tasks to preload")
    parser.add_argument("--concurrency", type=int, default=4, help="worker --concurrency")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20, help="lines per hot-spot list")
    parser.add_argument("--no-py-spy", action="store_true", help="skip sampling")
    parser.add_argument(
        "--mode",
        choices=["gil", "active", "wall"],
        default="gil",
        help="gil: only the thread holding the GIL (Python CPU time); active: threads py-spy "
        "thinks are running (includes GIL waits); wall: every thread, waiting or not",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the raw stacks, statement counts and worker log here"
    )
    return parser.parse_args(argv)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # up to steal; guest time is already inside user
    return (total - idle) / ticks, total / ticks


class BackendCpuSampler(threading.Thread):
    """Track the CPU time of the PostgreSQL backends serving the benchmark database.

    Backends of the benchmark's own session are left out, so what remains is the server
    work done for the worker. A backend's CPU time is only readable while it lives, so
    sample often and keep the last reading of each.
    """

    def __init__(self, database_name: str, exclude_pid: int) -> None:
        super().__init__(name="backend-cpu", daemon=True)
        self.marker = f" {database_name} "
        self.exclude_pid = exclude_pid
        self.seconds_by_pid: dict[int, float] = {}
        self.stopped = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.exclude_pid:
                continue
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if not title.startswith("postgres: ") or self.marker not in title:
                    continue
                # Fields after the command name (which is in parentheses): utime is the
                # 12th and stime the 13th.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, UnicodeDecodeError):
                continue
            seconds = (int(fields[11]) + int(fields[12])) / self.ticks
            self.seconds_by_pid[int(entry.name)] = seconds

    def stop(self) -> float:
        """Stop sampling; return the CPU seconds of every backend seen."""
        self.stopped.set()
        self.join()
        return sum(self.seconds_by_pid.values())


def find_py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def startup_cpu_seconds(work: Path) -> float:
    """CPU time of a burst worker that finds nothing to do: start-up and exit alone."""
    database.clear_tasks()
    idle = start_worker(work, "empty-queue-worker", "--burst")
    result = wait_for_exit(idle, timeout=120)
    require_clean_exit(idle, result)
    return result.cpu_user + result.cpu_system


def run_profile(args: argparse.Namespace, work: Path) -> list[str]:
    tasks = args.tasks
    startup_cpu = startup_cpu_seconds(work)
    database.clear_tasks()
    database.preload("noop", tasks, 1000)
    database.analyze()
    is_postgres = database.vendor() == "postgresql"
    commits_before = database.committed_transactions() if is_postgres else 0
    sampler = None
    if is_postgres:
        sampler = BackendCpuSampler(database.name(), database.backend_pid())
        sampler.start()
    counts_path = work / "statements.json"
    os.environ["TASKQUEUE_BENCH_COUNT_STATEMENTS"] = str(counts_path)
    busy_before, total_before = machine_cpu_seconds()
    worker = start_worker(
        work, "profiled-worker", "--burst", "--concurrency", str(args.concurrency)
    )
    del os.environ["TASKQUEUE_BENCH_COUNT_STATEMENTS"]
    spy = None
    py_spy = None if args.no_py_spy else find_py_spy()
    stacks_path = work / "stacks.txt"
    if py_spy:
        command = [py_spy, "record", "--pid", str(worker.pid), "--rate", str(args.rate)]
        command += ["--format", "raw", "--threads", "--nonblocking", "-o", str(stacks_path)]
        command += {"gil": ["--gil"], "active": [], "wall": ["--idle"]}[args.mode]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = wait_for_exit(worker, timeout=600)
    busy_after, total_after = machine_cpu_seconds()
    backend_cpu = sampler.stop() if sampler is not None else None
    require_clean_exit(worker, result)
    if spy is not None:
        spy.wait(timeout=60)
    done, first, last = database.completed_span("noop")
    if done != tasks or first is None or last is None:
        raise BenchError(f"{done:,} of {tasks:,} tasks completed")
    span = (last - first).total_seconds()
    worker_cpu = result.cpu_user + result.cpu_system
    machine_busy = busy_after - busy_before
    wall = (total_after - total_before) / (os.cpu_count() or 1)
    lines = [
        f"profile: {tasks:,} no-op tasks, one burst worker, concurrency {args.concurrency}, "
        f"{database.describe()}",
        f"load average {machine.load_average()} (other work on the machine skews every figure)",
        "",
        f"throughput        {done / span:,.0f} tasks/s (first claim to last completion, "
        f"{span:.2f} s)",
        f"worker CPU        {(worker_cpu - startup_cpu) / done * 1e6:,.0f} us/task after "
        f"start-up ({worker_cpu:.2f} s in all, user {result.cpu_user:.2f}, system "
        f"{result.cpu_system:.2f}, less {startup_cpu:.2f} s that a worker with nothing to do "
        "takes to start and stop)",
    ]
    if backend_cpu is not None:
        lines.append(
            f"PostgreSQL CPU    {backend_cpu / done * 1e6:,.0f} us/task (the worker's backends; "
            "WAL writer and other server processes not included)"
        )
    lines += [
        f"whole machine     {(machine_busy - worker_cpu) / done * 1e6:,.0f} us/task besides the "
        "worker "
        f"(PostgreSQL, the benchmark, anything else; machine {machine_busy / wall * 100:.0f}% busy "
        f"of {os.cpu_count()} cores over {wall:.1f} s)",
    ]
    if is_postgres:
        wait_until(lambda: database.other_sessions() == 0, 30, "the worker's session to end")
        commits = database.committed_transactions() - commits_before
        lines.append(
            f"transactions      {commits / done:.3f} per task ({commits:,} committed in the "
            "database while the worker ran, its start-up and goodbye included)"
        )
    lines += ["", *statement_report(counts_path, done)]
    if spy is not None and stacks_path.exists():
        lines += ["", *StackProfile.from_raw(stacks_path).report(args.top, args.mode)]
    elif not args.no_py_spy:
        lines += ["", "py-spy not found: `.venv/bin/pip install py-spy` for the hot spots"]
    return lines


def statement_report(path: Path, tasks: int) -> list[str]:
    if not path.exists():
        return ["no statement counts (the worker did not exit normally)"]
    rows = sorted(json.loads(path.read_text()), key=lambda r: -r["count"])
    total = sum(r["count"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    lines = [
        f"statements        {total / tasks:.3f} per task ({total:,} in all, "
        f"{seconds:.2f} s waiting on the database as the client saw it)",
        f"  {'thread':<18} {'count':>7} {'/task':>7} {'ms each':>8}  statement",
    ]
    for row in rows:
        each = row["seconds"] / row["count"] * 1000
        lines.append(
            f"  {row['thread'][:18]:<18} {row['count']:>7,} {row['count'] / tasks:>7.3f} "
            f"{each:>8.2f}  {row['statement']}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    database.configure(args.database_url, args.sqlite)
    database.recreate()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="taskqueue-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        lines = run_profile(args, work)
    except BenchError as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.keep:
        print(f"\nraw stacks (collapsed, for flame graph tools), counts and log kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
