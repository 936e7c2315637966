"""The batches of demo tasks that ``demo_feed`` and the index page enqueue."""

from __future__ import annotations

from typing import Any

from django.db import transaction

import taskqueue
from taskqueue.models import Task

from .tasks import (
    charge_order,
    data_processing,
    email_receipt,
    flaky_sync,
    make_invoice,
    report_generation,
    ship_order,
    sync_partner,
    validate_order,
)

REPORT_TYPES = ("sales", "inventory", "traffic")


def enqueue_first_batch(created_by: Any = None) -> list[Task]:
    """Enqueue a mix of work, exactly one task that retries once and one that dead-letters."""
    options = {"created_by": created_by}
    with transaction.atomic():
        # Inside atomic(): the tasks exist only if this block commits (and, on PostgreSQL,
        # workers are woken at the commit).
        tasks = taskqueue.enqueue_many(
            [("data_processing", {"dataset": f"warmup-{n}", "size": 500 * n}) for n in (1, 2, 3)],
            **options,
        )
        tasks.append(data_processing.enqueue({**options, "priority": "critical"}, dataset="vip"))
        tasks.append(report_generation.enqueue(options, report_type="sales", rows=1200))
        tasks.append(flaky_sync.enqueue(options, partner="acme-crm"))
        tasks.append(sync_partner.enqueue(options, partner="legacy-erp"))
        tasks += enqueue_order(1001, 42.5, created_by=created_by)
    return tasks


def enqueue_order(order_id: int, amount: float, created_by: Any = None) -> list[Task]:
    """The order pipeline as one workflow: shown as a unit under Workflows in the admin."""
    run = taskqueue.chain(
        validate_order.step(order_id=order_id, amount=amount),
        charge_order.step(order_id=order_id),
        taskqueue.group(
            email_receipt.step(order_id=order_id), make_invoice.step(order_id=order_id)
        ),
        ship_order.step(order_id=order_id),
        name=f"order {order_id}",
    ).enqueue(created_by=created_by)
    return list(run.tasks)


def enqueue_stream_tick(tick: int, created_by: Any = None) -> list[Task]:
    """Enqueue the steady trickle: three small jobs and one report."""
    items: list[dict[str, Any]] = [
        {
            "task_type": "data_processing",
            "payload": {"dataset": f"sensor-{tick}-{n}", "size": 1000 + 250 * n},
            "priority": "high" if n == 0 else "normal",
        }
        for n in range(3)
    ]
    items.append(
        {
            "task_type": "report_generation",
            "payload": {"report_type": REPORT_TYPES[tick % len(REPORT_TYPES)], "rows": 100 * tick},
        }
    )
    tasks = taskqueue.enqueue_many(items, created_by=created_by)
    if tick % 3 == 0:
        tasks += enqueue_order(2000 + tick, 10.0 + tick, created_by=created_by)
    return tasks
