"""The worker side of outcome metrics: count in memory, write every few seconds.

The main thread counts each outcome it has written (and the duty thread each task rescue
took back) with a few dict and list increments: no I/O on the hot path. A duty flushes the
counts every ``METRICS["FLUSH_INTERVAL"]`` seconds, and the worker flushes once more when it
stops. A flush adds the counts to this worker's ``MetricsMinute`` rows (only this worker
writes them: no contention between workers) and to the shared ``MetricsTotal`` rows, all in
one short transaction: it lands whole or not at all, and when it fails the counts stay in
memory for the next flush, so nothing is lost and nothing is counted twice.

Minutes are minutes of the database clock: the worker measures its offset from it at start
and at every flush, so workers on hosts with skewed clocks still fill the same minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from taskqueue.models import TaskStatus
from taskqueue.monitoring.metrics import BUCKETS, COUNTERS, TIME_BUCKETS
from taskqueue.store import ClaimedTask, db_now
from taskqueue.store.metrics import MinuteKey, add_counts, merge_histograms
from taskqueue.store.transitions import Transition

logger = logging.getLogger("taskqueue.monitoring.recorder")


class Counts:
    """What one worker counted for one (minute, task type, queue) since its last flush."""

    __slots__ = (
        "cancelled",
        "dead_lettered",
        "failed",
        "retried",
        "run_histogram",
        "run_seconds",
        "succeeded",
        "timed_out",
        "wait_histogram",
        "wait_seconds",
    )

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.cancelled = 0
        self.timed_out = 0
        self.run_seconds = 0.0
        self.wait_seconds = 0.0
        self.run_histogram = [0] * BUCKETS
        self.wait_histogram = [0] * BUCKETS

    def add(self, other: Counts) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.run_seconds += other.run_seconds
        self.wait_seconds += other.wait_seconds
        self.run_histogram = merge_histograms(self.run_histogram, other.run_histogram)
        self.wait_histogram = merge_histograms(self.wait_histogram, other.wait_histogram)

    def add_status(self, status: str) -> None:
        """Count one task that ended (this attempt) in ``status``."""
        for name in COUNTED_AS[status]:
            setattr(self, name, getattr(self, name) + 1)

    def ran(self, seconds: float) -> None:
        self.run_seconds += seconds
        self.run_histogram[bisect_left(TIME_BUCKETS, seconds)] += 1

    def waited(self, seconds: float) -> None:
        self.wait_seconds += seconds
        self.wait_histogram[bisect_left(TIME_BUCKETS, seconds)] += 1


# The counters one task's new status adds to: a failed attempt is retried or dead-lettered.
COUNTED_AS: dict[str, tuple[str, ...]] = {
    TaskStatus.COMPLETED: ("succeeded",),
    TaskStatus.CANCELLED: ("cancelled",),
    TaskStatus.RETRYING: ("failed", "retried"),
    TaskStatus.FAILED: ("failed", "dead_lettered"),
}


class MetricsRecorder:
    """One worker's outcome counters (thread-safe: counted on one thread, flushed on another)."""

    def __init__(self, worker_id: str, using: str) -> None:
        self.worker_id = worker_id
        self.using = using
        self.pending: dict[MinuteKey, Counts] = {}
        self.lock = threading.Lock()  # guards ``pending``
        self.flush_lock = threading.Lock()  # one flush at a time (duty thread, worker stop)
        # Database clock (seconds since the epoch) minus time.monotonic().
        self.offset = time.time() - time.monotonic()

    # --- counting (hot path) -------------------------------------------------------------

    def sync_clock(self, using: str | None = None) -> None:
        """Measure the offset of the database clock (one query)."""
        before = time.monotonic()
        now = db_now(using or self.using).timestamp()
        after = time.monotonic()
        self.offset = now - (before + after) / 2

    def _counts(self, task: ClaimedTask) -> Counts:
        # Called with the lock held.
        key = (int((time.monotonic() + self.offset) // 60), task.task_type, task.queue)
        counts = self.pending.get(key)
        if counts is None:
            counts = self.pending[key] = Counts()
        return counts

    def count(self, transition: Transition) -> None:
        """Count one written transition the way it is announced (nothing if fenced out)."""
        if transition.status is None:
            return
        task = transition.task
        wait = _wait_seconds(task)
        with self.lock:
            counts = self._counts(task)
            counts.add_status(transition.status)
            if transition.failed and transition.timed_out:
                counts.timed_out += 1
            if transition.ran:
                counts.ran(transition.duration or 0.0)
            if wait is not None:
                counts.waited(wait)

    def count_all(self, transitions: Iterable[Transition]) -> None:
        """Count many transitions (a rescue's: how long those tasks ran is unknown)."""
        for transition in transitions:
            self.count(transition)

    def take(self) -> dict[MinuteKey, Counts]:
        with self.lock:
            taken, self.pending = self.pending, {}
        return taken

    def give_back(self, taken: dict[MinuteKey, Counts]) -> None:
        """Put counts whose write failed back, merged with those counted since."""
        with self.lock:
            for key, counts in taken.items():
                current = self.pending.get(key)
                if current is None:
                    self.pending[key] = counts
                else:
                    current.add(counts)

    # --- flushing (duty thread, and once at stop) ----------------------------------------

    def flush(self) -> int:
        """Write what was counted since the last flush; return the (minute, type, queue)
        keys written. On a database error the counts are kept and the error re-raised."""
        with self.flush_lock:
            taken = self.take()
            if not taken:
                return 0
            try:
                self._write(taken)
            except BaseException:
                self.give_back(taken)
                raise
            try:
                self.sync_clock()
            except Exception:
                # The counts are written; a stale offset only matters for minutes.
                logger.debug("could not read the database clock", exc_info=True)
            return len(taken)

    def _write(self, taken: dict[MinuteKey, Counts]) -> None:
        totals: dict[tuple[str, str], Counts] = {}
        for (_, task_type, queue), counts in taken.items():
            totals.setdefault((task_type, queue), Counts()).add(counts)
        add_counts(
            self.using,
            self.worker_id,
            {key: _values(counts, wait=True) for key, counts in taken.items()},
            {key: _values(counts, wait=False) for key, counts in totals.items()},
        )


def _values(counts: Counts, *, wait: bool) -> dict[str, object]:
    values: dict[str, object] = {name: getattr(counts, name) for name in COUNTERS}
    values["run_seconds"] = counts.run_seconds
    values["run_histogram"] = list(counts.run_histogram)
    if wait:
        values["wait_seconds"] = counts.wait_seconds
        values["wait_histogram"] = list(counts.wait_histogram)
    return values


def _wait_seconds(task: ClaimedTask) -> float | None:
    """How long the task waited between becoming due and being claimed (both database
    clock); None when either time is unknown."""
    if task.started_at is None or task.run_at is None:
        return None
    return max((task.started_at - task.run_at).total_seconds(), 0.0)


def flush_at_stop(recorder: MetricsRecorder) -> None:
    """The last flush of a stopping worker: a short outage is waited out, a long one loses
    the counts of the last seconds (logged), never the worker's exit."""
    for attempt in range(3):
        try:
            recorder.flush()
            return
        except (OperationalError, InterfaceError) as exc:
            connections[recorder.using].close()
            if attempt == 2:
                logger.warning(
                    "worker %s could not write its last outcome metrics (%s); they are lost",
                    recorder.worker_id,
                    str(exc).strip(),
                )
                return
            time.sleep(0.5 * (attempt + 1))  # back off between retries; nothing to wait on
        except Exception:
            logger.warning(
                "worker %s could not write its last outcome metrics",
                recorder.worker_id,
                exc_info=True,
            )
            return
