"""Outcome metrics rows: a worker's flush adds what it counted to ``MetricsMinute`` (its
own rows) and ``MetricsTotal`` (shared by every worker), in one short transaction.

The counts arrive as plain values, one mapping per row: numbers (counters, seconds) are
added to the row, lists (histograms) merged element-wise. What is counted, and when, is
``taskqueue.monitoring.recorder``'s business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Now

from taskqueue.models import MetricsMinute, MetricsTotal

# (minute number since the epoch, task type, queue)
MinuteKey = tuple[int, str, str]
# (task type, queue)
TotalKey = tuple[str, str]
# Field name -> what to add: a number, or a histogram (a list of bucket counts).
Values = Mapping[str, Any]


def add_counts(
    using: str,
    worker_id: str,
    minutes: Mapping[MinuteKey, Values],
    totals: Mapping[TotalKey, Values],
) -> None:
    """Add one flush's counts to this worker's minute rows and to the shared totals: all of
    it, or (on an error, re-raised) nothing."""
    with transaction.atomic(using=using):
        # Sorted: two workers flushing at once lock the shared total rows in one order.
        for key in sorted(minutes):
            _add_to_minute(using, worker_id, key, minutes[key])
        for key in sorted(totals):
            _add_to_total(using, key, totals[key])


def merge_histograms(stored: Iterable[int] | None, delta: Iterable[int]) -> list[int]:
    """Element-wise sum; a stored histogram that is empty (a new row) counts as zeros."""
    left, right = list(stored or ()), list(delta)
    size = max(len(left), len(right))
    left += [0] * (size - len(left))
    right += [0] * (size - len(right))
    return [a + b for a, b in zip(left, right, strict=True)]


def _add_to_minute(using: str, worker_id: str, key: MinuteKey, values: Values) -> None:
    minute, task_type, queue = key
    lookup = {
        "minute": datetime.fromtimestamp(minute * 60, tz=UTC),
        "worker_id": worker_id,
        "task_type": task_type,
        "queue": queue,
    }
    rows = MetricsMinute.objects.using(using)
    row = rows.select_for_update().filter(**lookup).first()
    if row is None:
        try:
            # A savepoint: a row created meanwhile (a previous process of this worker
            # id) must not spoil the whole flush.
            with transaction.atomic(using=using):
                rows.create(**lookup, **values)
            return
        except IntegrityError:
            row = rows.select_for_update().get(**lookup)
    for name, value in values.items():
        if isinstance(value, list):
            setattr(row, name, merge_histograms(getattr(row, name), value))
        else:
            setattr(row, name, getattr(row, name) + value)
    row.save(using=using)


def _add_to_total(using: str, key: TotalKey, values: Values) -> None:
    task_type, queue = key
    histograms = [name for name, value in values.items() if isinstance(value, list)]
    rows = MetricsTotal.objects.using(using).filter(task_type=task_type, queue=queue)
    # Locked first: the histograms are merged in Python, so no other flush may change them
    # between this read and the write below.
    stored = rows.select_for_update().values(*histograms).first()
    if stored is None:
        try:
            with transaction.atomic(using=using):
                MetricsTotal.objects.using(using).create(task_type=task_type, queue=queue, **values)
            return
        except IntegrityError:
            # Another worker created it first; its row lock now orders us after it.
            stored = rows.select_for_update().values(*histograms).get()
    rows.update(
        **{
            name: merge_histograms(stored[name], value)
            if isinstance(value, list)
            else F(name) + value
            for name, value in values.items()
        },
        updated_at=Now(),
    )
