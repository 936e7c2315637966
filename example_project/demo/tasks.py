"""Demo handlers: quick work, a report with progress, a flaky sync and a broken one.

taskqueue imports every installed app's ``tasks.py`` at start-up (like ``admin.py``), so the
decorators below are all it takes to register these task types.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import taskqueue

REPORT_SECTIONS = 5
# Long enough per section that the admin shows the progress moving.
REPORT_SECTION_SECONDS = 0.4


@taskqueue.handler("data_processing", description="Crunch a small batch of numbers")
def data_processing(dataset: str, size: int = 2000) -> dict[str, Any]:
    """Summarise ``size`` pseudo-random readings of ``dataset`` (a few milliseconds of work)."""
    rng = random.Random(f"{dataset}:{size}")
    readings = [rng.gauss(20.0, 5.0) for _ in range(size)]
    return {
        "dataset": dataset,
        "count": size,
        "mean": round(statistics.fmean(readings), 3),
        "stdev": round(statistics.stdev(readings), 3) if size > 1 else 0.0,
        "max": round(max(readings), 3) if readings else None,
    }


@taskqueue.handler(
    "report_generation",
    takes_context=True,
    priority="low",
    description="Build a report section by section, reporting progress",
)
def report_generation(
    ctx: taskqueue.TaskContext, report_type: str, rows: int = 500
) -> dict[str, Any]:
    """Build a report in sections, showing progress in the admin as it goes."""
    done = 0
    for section in range(1, REPORT_SECTIONS + 1):
        if ctx.cancel_requested:
            # Stop early and keep what was built: the task completes with a partial result.
            return {"report_type": report_type, "rows": done, "cancelled": True}
        time.sleep(REPORT_SECTION_SECONDS)  # stands in for real queries
        done = rows * section // REPORT_SECTIONS
        ctx.set_progress(section / REPORT_SECTIONS, f"section {section} of {REPORT_SECTIONS}")
    return {"report_type": report_type, "rows": done}


@taskqueue.handler(
    "flaky_sync",
    takes_context=True,
    max_attempts=3,
    retry=taskqueue.Fixed(2),
    description="Sync with a partner API that times out on the first try",
)
def flaky_sync(ctx: taskqueue.TaskContext, partner: str) -> dict[str, Any]:
    """Fail the first attempt, succeed on the retry: a retry you can watch in the admin."""
    if ctx.attempt == 1:
        raise ConnectionError(f"{partner} did not answer in time (the demo's first try fails)")
    return {"partner": partner, "synced_on_attempt": ctx.attempt}


@taskqueue.handler(
    "sync_partner",
    max_attempts=3,
    retry=taskqueue.Fixed(2),
    description="Sync with a partner whose API always refuses us",
)
def sync_partner(partner: str) -> None:
    """Always fail, so the task uses its three attempts and lands in the dead letters."""
    raise RuntimeError(f"{partner} rejected our credentials (HTTP 401; the demo always fails)")
