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


# --- The order pipeline: a workflow (see batches.enqueue_order) -----------------------------
# validate -> charge -> (receipt email and invoice, in parallel) -> ship. Each step reads
# what the steps before it returned through ctx.upstream_results.


@taskqueue.handler("validate_order", description="Check an order before charging it")
def validate_order(order_id: int, amount: float) -> dict[str, Any]:
    if amount <= 0:
        raise taskqueue.PermanentError(f"order {order_id} has no amount to charge")
    return {"order_id": order_id, "amount": amount}


@taskqueue.handler(
    "charge_order",
    takes_context=True,
    rate_limit="5/s",
    circuit_breaker=taskqueue.CircuitBreaker(failures=5, cooldown=30),
    description="Charge the card through the payment provider (rate limited)",
)
def charge_order(ctx: taskqueue.TaskContext, order_id: int) -> dict[str, Any]:
    (validated,) = ctx.upstream_results
    return {"order_id": order_id, "charged": validated["amount"], "charge_id": f"ch_{order_id}"}


@taskqueue.handler("email_receipt", takes_context=True, description="Email the receipt")
def email_receipt(ctx: taskqueue.TaskContext, order_id: int) -> dict[str, Any]:
    (charge,) = ctx.upstream_results
    return {"order_id": order_id, "receipt_for": charge["charge_id"]}


@taskqueue.handler("make_invoice", takes_context=True, description="Write the invoice")
def make_invoice(ctx: taskqueue.TaskContext, order_id: int) -> dict[str, Any]:
    (charge,) = ctx.upstream_results
    return {"order_id": order_id, "invoice": f"INV-{order_id}", "total": charge["charged"]}


@taskqueue.handler(
    "ship_order",
    takes_context=True,
    concurrency_limit=2,
    description="Book the courier once the receipt and invoice are done (2 at a time)",
)
def ship_order(ctx: taskqueue.TaskContext, order_id: int) -> dict[str, Any]:
    receipt, invoice = ctx.upstream_results
    return {"order_id": order_id, "shipped_with": invoice["invoice"], "notified": bool(receipt)}


# --- A recurring task: shows up under Schedules in the admin --------------------------------


@taskqueue.periodic("*/1 * * * *", name="demo-minutely-digest")
@taskqueue.handler("queue_digest", description="Count the queue's tasks by status every minute")
def queue_digest() -> dict[str, int]:
    from django.db.models import Count

    from taskqueue.models import Task

    return dict(Task.objects.values_list("status").annotate(n=Count("id")).order_by())
