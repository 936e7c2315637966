"""Outcome metrics: what workers record (``MetricsMinute``, ``MetricsTotal``) and how the
stats and Prometheus views read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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


@dataclass
class WindowSummary:
    """Outcomes of one task type and queue over a window, summed over every worker."""

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
    """Per (task type, queue) outcomes recorded in minutes from ``since`` to ``until``."""
    raise NotImplementedError  # TODO(metrics recorder)


def per_minute(since: datetime, until: datetime | None = None) -> list[tuple[datetime, int, int]]:
    """(minute, succeeded, failed attempts) for every minute of the window, oldest first,
    zero-filled."""
    raise NotImplementedError  # TODO(metrics recorder)


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The ``fraction`` (0..1) quantile of a histogram, interpolated within its bucket;
    None for an empty histogram."""
    raise NotImplementedError  # TODO(metrics recorder)
