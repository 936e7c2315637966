"""Outcome metrics: what workers record (``MetricsMinute``, ``MetricsTotal``) and how the
stats and Prometheus views read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from taskqueue import store
from taskqueue.models import MetricsMinute

# Upper bounds (seconds) of the run-time and wait-time histogram buckets; a histogram is a
# list of len(TIME_BUCKETS) + 1 counts, the last one for everything above the last bound.
TIME_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
BUCKETS = len(TIME_BUCKETS) + 1
COUNTERS = ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "timed_out")
ONE_MINUTE = timedelta(minutes=1)


@dataclass
class WindowSummary:
    """Outcomes of one task type and queue over a window, summed over every worker.

    ``failed`` counts failed attempts: each one is also counted as ``retried`` or
    ``dead_lettered``, and ``timed_out`` when it overran its timeout. ``cancelled`` counts
    tasks a worker ended cancelled (a pending task cancelled through the API never reached
    a worker and is not here). Tasks rescued from a dead worker are counted by the worker
    that rescued them. The run histogram has one sample per attempt that ran (not for a
    rescued attempt, whose run time is unknown); the wait histogram one per attempt, the
    wait being claim time minus due time (``run_at``), both on the database clock.
    """

    task_type: str
    queue: str
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    timed_out: int = 0
    run_seconds: float = 0.0
    wait_seconds: float = 0.0
    run_histogram: list[int] = field(default_factory=list)
    wait_histogram: list[int] = field(default_factory=list)


def window_summaries(since: datetime, until: datetime | None = None) -> list[WindowSummary]:
    """Per (task type, queue) outcomes recorded in minutes from ``since`` to ``until``.

    The window holds the minutes that start at or after ``since`` and before ``until``
    (default: the database clock now, so the current, unfinished minute is in). Sums every
    worker's rows in one query; histograms are summed element-wise by the database too.
    Ordered by task type, then queue.
    """
    rows = _window(since, until).values("task_type", "queue").order_by("task_type", "queue")
    sums: dict[str, Any] = {name: Sum(name) for name in (*COUNTERS, "run_seconds", "wait_seconds")}
    for column in ("run_histogram", "wait_histogram"):
        for index in range(BUCKETS):
            sums[f"{column}_{index}"] = Sum(
                Cast(KeyTextTransform(index, column), models.BigIntegerField())
            )
    summaries = []
    for row in rows.annotate(**sums):
        summary = WindowSummary(task_type=row["task_type"], queue=row["queue"])
        for name in COUNTERS:
            setattr(summary, name, row[name] or 0)
        summary.run_seconds = row["run_seconds"] or 0.0
        summary.wait_seconds = row["wait_seconds"] or 0.0
        summary.run_histogram = [row[f"run_histogram_{i}"] or 0 for i in range(BUCKETS)]
        summary.wait_histogram = [row[f"wait_histogram_{i}"] or 0 for i in range(BUCKETS)]
        summaries.append(summary)
    return summaries


def per_minute(since: datetime, until: datetime | None = None) -> list[tuple[datetime, int, int]]:
    """(minute, succeeded, failed attempts) for every minute of the window, oldest first,
    zero-filled.

    The same window as ``window_summaries``: minutes starting at or after ``since`` and
    before ``until`` (default: the database clock now, the current minute included).
    """
    until = _until(until)
    recorded = {
        _as_utc(row["minute"]): (row["succeeded"] or 0, row["failed"] or 0)
        for row in _window(since, until)
        .values("minute")
        .order_by("minute")
        .annotate(succeeded=Sum("succeeded"), failed=Sum("failed"))
    }
    minutes = []
    minute = _first_minute(since)
    while minute < until:
        succeeded, failed = recorded.get(minute, (0, 0))
        minutes.append((minute, succeeded, failed))
        minute += ONE_MINUTE
    return minutes


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The ``fraction`` (0..1) quantile of a histogram, interpolated within its bucket;
    None for an empty histogram.

    Approximate to the bucket: the samples are assumed spread evenly between the bucket's
    bounds (0 for the first bucket's lower one). A quantile in the last, unbounded bucket is
    reported as its lower bound, ``TIME_BUCKETS[-1]`` (a value "above" it, not an estimate).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number from 0 to 1, got {fraction!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be from 0 to 1, got {fraction!r}")
    if histogram and len(histogram) != BUCKETS:
        raise ValueError(
            f"a histogram has {BUCKETS} counts (one per TIME_BUCKETS bound and one above), "
            f"got {len(histogram)}"
        )
    total = sum(histogram)
    if total <= 0:
        return None
    rank = fraction * total
    below = 0
    for index, count in enumerate(histogram):
        if count <= 0:
            continue
        if below + count >= rank:
            lower = TIME_BUCKETS[index - 1] if index > 0 else 0.0
            if index == len(TIME_BUCKETS):
                return lower
            upper = TIME_BUCKETS[index]
            return lower + (upper - lower) * max(rank - below, 0) / count
        below += count
    return TIME_BUCKETS[-1]  # unreachable: the loop ends in the last non-empty bucket


def _until(until: datetime | None) -> datetime:
    return _as_utc(until) if until is not None else store.db_now(store.database_alias())


def _window(since: datetime, until: datetime | None) -> QuerySet[MetricsMinute]:
    return MetricsMinute.objects.using(store.database_alias()).filter(
        minute__gte=_first_minute(since), minute__lt=_until(until)
    )


def _first_minute(since: datetime) -> datetime:
    """The first minute starting at or after ``since``."""
    since = _as_utc(since)
    floor = since.replace(second=0, microsecond=0)
    return floor if floor == since else floor + ONE_MINUTE


def _as_utc(value: datetime) -> datetime:
    if timezone.is_naive(value):
        raise ValueError(f"metrics windows take aware datetimes, got naive {value.isoformat()}")
    return value.astimezone(UTC)
