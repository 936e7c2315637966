"""The stats: one JSON-ready dict answering how deep, how old, how fast, what fails, who works.

Counts come from ``queries.queue_snapshot`` (exact, or estimated at scale and then named in
``approximate``); rates and percentiles from the per-minute metrics the workers record
(``taskqueue.monitoring.metrics``) over a window.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Sum

from taskqueue import store
from taskqueue.models import MetricsTotal
from taskqueue.monitoring import metrics, queries
from taskqueue.monitoring.metrics import WindowSummary
from taskqueue.monitoring.unserved import unserved_work
from taskqueue.schedules import late_schedules

DEFAULT_WINDOW = 3600
MIN_WINDOW = 60
MAX_WINDOW = 7 * 86400
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


class StatsError(ValueError):
    """A bad stats request (for example a window out of bounds)."""


def parse_window(value: Any) -> int:
    """A window in whole seconds from MIN_WINDOW to MAX_WINDOW; a clear error otherwise."""
    if value is None or value == "":
        return DEFAULT_WINDOW
    try:
        seconds = int(str(value))
    except ValueError:
        raise StatsError(f"window must be a whole number of seconds, got {value!r}") from None
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise StatsError(
            f"window must be between {MIN_WINDOW} and {MAX_WINDOW} seconds, got {seconds}"
        )
    return seconds


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _merge(summaries: list[WindowSummary]) -> dict[str, Any]:
    """Sum summaries (of one type, or all) into counts, rates and merged histograms."""
    total: dict[str, Any] = {
        "succeeded": 0,
        "failed": 0,
        "retried": 0,
        "dead_lettered": 0,
        "cancelled": 0,
        "timed_out": 0,
        "run_seconds": 0.0,
        "wait_seconds": 0.0,
    }
    run = [0] * (len(metrics.TIME_BUCKETS) + 1)
    wait = [0] * (len(metrics.TIME_BUCKETS) + 1)
    for summary in summaries:
        for key in ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "timed_out"):
            total[key] += getattr(summary, key)
        total["run_seconds"] += summary.run_seconds
        total["wait_seconds"] += summary.wait_seconds
        for histogram, into in ((summary.run_histogram, run), (summary.wait_histogram, wait)):
            for index, count in enumerate(histogram[: len(into)]):
                into[index] += count
    # An attempt ends in success or failure; failure and retry rates are per attempt.
    attempts = total["succeeded"] + total["failed"]
    total["attempts"] = attempts
    total["failure_rate"] = _rate(total["failed"], attempts)
    total["retry_rate"] = _rate(total["retried"], attempts)
    total["dead_letter_rate"] = _rate(total["dead_lettered"], attempts)
    total["run_seconds"] = round(total["run_seconds"], 6)
    total["wait_seconds"] = round(total["wait_seconds"], 6)
    total["run_histogram"] = run
    total["wait_histogram"] = wait
    return total


def _percentiles(histogram: list[int]) -> dict[str, float | None]:
    values = {}
    for name, fraction in PERCENTILES:
        value = metrics.percentile(histogram, fraction)
        values[name] = None if value is None else round(value, 6)
    return values


def _timings(merged: dict[str, Any]) -> dict[str, Any]:
    succeeded = merged["succeeded"]
    run_count = sum(merged["run_histogram"])
    wait_count = sum(merged["wait_histogram"])
    return {
        "run_time": {
            **_percentiles(merged["run_histogram"]),
            "mean": round(merged["run_seconds"] / run_count, 6) if run_count else None,
            "count": run_count,
        },
        "wait_time": {
            **_percentiles(merged["wait_histogram"]),
            "mean": round(merged["wait_seconds"] / wait_count, 6) if wait_count else None,
            "count": wait_count,
        },
        "succeeded": succeeded,
    }


def _outcomes(merged: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "attempts",
        "succeeded",
        "failed",
        "retried",
        "dead_lettered",
        "cancelled",
        "timed_out",
        "failure_rate",
        "retry_rate",
        "dead_letter_rate",
    )
    return {key: merged[key] for key in keys}


def _totals_since_start(using: str) -> dict[str, dict[str, int]]:
    """Outcomes per task type since the first worker ran (``MetricsTotal``, all queues)."""
    keys = ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "timed_out")
    rows = (
        MetricsTotal.objects.using(using)
        .values("task_type")
        .order_by("task_type")
        .annotate(**{key: Sum(key) for key in keys})
    )
    return {row["task_type"]: {key: int(row[key] or 0) for key in keys} for row in rows}


def collect(window: int = DEFAULT_WINDOW, using: str | None = None) -> dict[str, Any]:
    """The stats as a JSON-ready dict (see the README for every field)."""
    using = using or store.database_alias()
    snapshot = queries.queue_snapshot(using)
    now: datetime = snapshot.now
    since = now - timedelta(seconds=window)
    summaries = metrics.window_summaries(since, now)
    hour = metrics.per_minute(now - timedelta(hours=1), now)
    workers = queries.live_workers(using)
    late = late_schedules(now)

    by_type_summaries: dict[str, list[WindowSummary]] = {}
    by_queue_summaries: dict[str, list[WindowSummary]] = {}
    for summary in summaries:
        by_type_summaries.setdefault(summary.task_type, []).append(summary)
        by_queue_summaries.setdefault(summary.queue, []).append(summary)

    by_type = snapshot.by_type()
    for task_type in by_type_summaries:
        by_type.setdefault(task_type, queries.empty_breakdown())
    for task_type, entry in by_type.items():
        merged = _merge(by_type_summaries.get(task_type, []))
        entry["window"] = _outcomes(merged)
        timings = _timings(merged)
        entry["run_time"] = timings["run_time"]
        entry["wait_time"] = timings["wait_time"]
    for task_type, totals in _totals_since_start(using).items():
        by_type.setdefault(task_type, queries.empty_breakdown())["since_start"] = totals
    for entry in by_type.values():
        entry.setdefault("since_start", None)
    by_queue = snapshot.by_queue()
    for queue in by_queue_summaries:
        by_queue.setdefault(queue, queries.empty_breakdown())
    for queue, entry in by_queue.items():
        entry["window"] = _outcomes(_merge(by_queue_summaries.get(queue, [])))

    overall = _merge(summaries)
    counts = {"total": snapshot.total, **snapshot.by_status}
    approximate = list(snapshot.approximations)
    if snapshot.approximate_statuses:
        approximate.append(
            "counts.total: sum of counts that include estimates ("
            + ", ".join(sorted(snapshot.approximate_statuses))
            + ")"
        )
    approximate.append(
        "run_time/wait_time percentiles: interpolated within histogram buckets "
        f"(bounds {', '.join(f'{b:g}' for b in metrics.TIME_BUCKETS)} s)"
    )
    oldest_age = snapshot.oldest_due_age
    return {
        "generated_at": now.isoformat(),
        "window": window,
        "counts": counts,
        "due": sum(snapshot.due_groups().values()),
        "oldest_pending_age": None if oldest_age is None else round(oldest_age, 3),
        "by_queue": by_queue,
        "by_type": by_type,
        "throughput": {
            "completed_last_hour": sum(succeeded for _, succeeded, _ in hour),
            "failed_last_hour": sum(failed for _, _, failed in hour),
            "per_minute": [
                {"minute": minute.isoformat(), "succeeded": succeeded, "failed": failed}
                for minute, succeeded, failed in hour
            ],
        },
        "window_outcomes": _outcomes(overall),
        "run_time": _timings(overall)["run_time"],
        "wait_time": _timings(overall)["wait_time"],
        "dead_letters": {"unreviewed": queries.unreviewed_dead_letters(using)},
        "workers": {"live": len(workers), "list": workers},
        # Due (type, queue) pairs no live worker will claim, and why (see monitoring.unserved).
        "unserved_work": unserved_work(snapshot, workers, using),
        "open_circuits": queries.open_circuits(using),
        "late_schedules": [item.as_dict() for item in late],
        "approximate": approximate,
    }
