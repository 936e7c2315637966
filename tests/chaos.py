"""Chaos helpers: a ledger of executions kept outside Django, and a crew of workers to kill.

The ledger is written by the ``chaos_ledger`` handler on an autocommit connection of its
own, so an execution is counted even when the worker dies before its outcome is recorded.
The crew starts real ``run_worker`` processes, SIGKILLs them at random, and remembers
which worker ids it killed so every duplicate execution can be traced to a kill.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.db import connection

from tests.conftest import REPO_ROOT, worker_command, worker_env

LEDGER_TABLE = "chaos_ledger"
CREATE_LEDGER = (
    f"CREATE TABLE {LEDGER_TABLE} (n integer NOT NULL, pid integer NOT NULL, "
    "worker varchar(255) NOT NULL, attempt integer NOT NULL, "
    "at timestamp DEFAULT CURRENT_TIMESTAMP)"
)
INSERT_ROW = (
    f"INSERT INTO {LEDGER_TABLE} (n, pid, worker, attempt) VALUES ({{p}}, {{p}}, {{p}}, {{p}})"
)


@dataclass(frozen=True)
class LedgerRow:
    n: int
    pid: int
    worker: str
    attempt: int


class _LedgerWriter:
    """One ledger connection per process, opened on first use and re-opened when broken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self._owner_pid = 0

    def record(self, n: int, worker: str, attempt: int) -> None:
        params = (n, os.getpid(), worker, attempt)
        with self._lock:
            try:
                self._execute(params)
            except Exception:
                # A broken connection: drop it and try once more on a new one.
                self._close()
                self._execute(params)

    def _execute(self, params: tuple[int, int, str, int]) -> None:
        if self._conn is None or self._owner_pid != os.getpid():
            self._conn = _connect()
            self._owner_pid = os.getpid()
        placeholder = "?" if connection.vendor == "sqlite" else "%s"
        self._conn.execute(INSERT_ROW.format(p=placeholder), params)

    def _close(self) -> None:
        try:
            if self._conn is not None and self._owner_pid == os.getpid():
                self._conn.close()
        except Exception:  # already broken: closing is best effort
            pass
        self._conn = None


def _connect() -> Any:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return sqlite3.connect(
            settings["NAME"], isolation_level=None, timeout=30, check_same_thread=False
        )
    import psycopg

    return psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        autocommit=True,
    )


_writer = _LedgerWriter()


def record_execution(n: int, worker: str, attempt: int) -> None:
    """Count one execution of task ``n`` in the ledger, committed at once."""
    _writer.record(n, worker, attempt)


def create_ledger() -> None:
    """Create the ledger table in the test database (not a Django model: no migration)."""
    with connection.cursor() as cursor:
        cursor.execute(CREATE_LEDGER)


def drop_ledger() -> None:
    """Drop the ledger table."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {LEDGER_TABLE}")


def read_ledger() -> list[LedgerRow]:
    """Every execution recorded so far."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT n, pid, worker, attempt FROM {LEDGER_TABLE}")
        return [LedgerRow(*row) for row in cursor.fetchall()]


def is_running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pids(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


@dataclass
class CrewMember:
    worker_id: str
    process: subprocess.Popen[bytes]
    stderr_path: Path
    stderr: IO[bytes]

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")


@dataclass
class Crew:
    """Long-running workers under test; SIGKILL them at random and start replacements.

    Worker stderr goes to files, not pipes: a pipe nobody reads fills up during a long run
    and blocks the worker on a log line, which looks exactly like a frozen worker.
    """

    log_dir: Path
    worker_args: tuple[str, ...]
    rng: random.Random = field(default_factory=random.Random)
    members: list[CrewMember] = field(default_factory=list)
    killed: list[CrewMember] = field(default_factory=list)
    started: int = 0

    def start(self) -> CrewMember:
        """Start one more worker with its own id."""
        self.started += 1
        worker_id = f"chaos-{self.started}"
        stderr_path = self.log_dir / f"{worker_id}.stderr"
        stderr = stderr_path.open("wb")
        process = subprocess.Popen(
            worker_command("--id", worker_id, *self.worker_args),
            env=worker_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        member = CrewMember(worker_id, process, stderr_path, stderr)
        self.members.append(member)
        return member

    def live(self) -> list[CrewMember]:
        return [m for m in self.members if m not in self.killed]

    def kill_one(self) -> tuple[CrewMember, set[int]]:
        """SIGKILL a random live worker (its process only, as the OOM killer would).

        Returns the victim and the processes it had started, which should die with it.
        """
        victim = self.rng.choice(self.live())
        children = child_pids(victim.process.pid)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=30)
        self.killed.append(victim)
        return victim, children

    def crashed(self) -> list[CrewMember]:
        """Workers that exited although nobody killed or stopped them."""
        return [m for m in self.live() if m.process.poll() is not None]

    def stop(self, timeout: float = 60) -> dict[str, int | None]:
        """SIGTERM the live workers and wait for them; their exit codes by worker id."""
        live = self.live()
        for member in live:
            member.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for member in live:
            try:
                codes[member.worker_id] = member.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                codes[member.worker_id] = None
        return codes

    def close(self) -> None:
        """Kill whatever still runs and close the log files."""
        for member in self.members:
            if member.process.poll() is None:
                member.process.kill()
                member.process.wait(timeout=30)
            member.stderr.close()

    def stderr_report(self, tail: int = 4000) -> str:
        """The end of every worker's stderr, for failure messages."""
        return "\n".join(
            f"--- stderr of {m.worker_id} (pid {m.process.pid}"
            f"{', killed' if m in self.killed else ''}) ---\n{m.stderr_text()[-tail:]}"
            for m in self.members
        )
