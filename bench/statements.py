"""Count the SQL statements a worker process sends, by thread and by statement shape.

Installed in a worker subprocess by ``bench.benchapp`` when the profiling run sets
``TASKQUEUE_BENCH_COUNT_STATEMENTS`` to a file path; the counts are written there as JSON
when the process exits.
"""

from __future__ import annotations

import atexit
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.db.backends.signals import connection_created

# Statement text up to this many characters is its "shape": long enough to tell the claim
# from the completion, short enough that VALUES lists of different lengths group together.
SHAPE_LENGTH = 90
_SPACES = re.compile(r"\s+")
_THREAD_NUMBER = re.compile(r"_\d+$")

_lock = threading.Lock()
# (thread group, statement shape) -> [statements, seconds waiting on the database]
_counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])


def statement_shape(sql: str) -> str:
    """Collapse whitespace and cut ``sql`` to its leading shape."""
    return _SPACES.sub(" ", sql).strip()[:SHAPE_LENGTH]


def _thread_group() -> str:
    # "taskqueue-task_3" and "taskqueue-task_0" are the same kind of thread.
    return _THREAD_NUMBER.sub("", threading.current_thread().name)


def _record(shape: str, elapsed: float) -> None:
    key = (_thread_group(), shape)
    with _lock:
        entry = _counts[key]
        entry[0] += 1
        entry[1] += elapsed


def _count(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        _record(statement_shape(sql), time.perf_counter() - started)


def _timed_commit(commit: Callable[[], Any]) -> Callable[[], Any]:
    # Commits go to the driver directly, not through execute wrappers; they are where
    # PostgreSQL waits for the WAL flush, so they are worth seeing.
    def timed() -> Any:
        started = time.perf_counter()
        try:
            return commit()
        finally:
            _record("COMMIT", time.perf_counter() - started)

    return timed


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Sent again when a connection object reconnects: instrument each object once.
    if getattr(connection, "_bench_counted", False):
        return
    connection._bench_counted = True
    connection.execute_wrappers.append(_count)
    connection._commit = _timed_commit(connection._commit)


def install_statement_counter(path: str) -> None:
    """Count every statement of every new connection; write the counts to ``path`` at exit."""
    connection_created.connect(_on_connection_created, weak=False)
    atexit.register(_write_counts, path)


def _write_counts(path: str) -> None:
    with _lock:
        rows = [
            {"thread": thread, "statement": shape, "count": int(n), "seconds": seconds}
            for (thread, shape), (n, seconds) in _counts.items()
        ]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(rows, file, indent=1)
