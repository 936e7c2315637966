"""Every write of an ``AlertState`` row: the throttle that alerts share across processes.

One row per channel and event (``"email:dead_lettered"``). Each write is a compare-and-set
on the row as it was read (its ``last_sent_at`` and ``suppressed``): when another process
sent or counted in between, the write matches nothing and returns False, and the caller
reads again. ``taskqueue.monitoring.alerts`` decides what to send.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet

from taskqueue.models import AlertState


def current(using: str, key: str) -> AlertState:
    """The throttle row of ``key`` as it is now (created on the first alert of its kind)."""
    state, _ = AlertState.objects.using(using).get_or_create(key=key)
    return state


def record_send(
    using: str, state: AlertState, now: datetime, held_back: int, samples: list[dict[str, Any]]
) -> bool:
    """This process sends now: start a new window holding ``held_back`` alerts."""
    return bool(
        _unchanged(using, state).update(
            last_sent_at=now, suppressed=held_back, samples=samples, updated_at=now
        )
    )


def record_held_back(
    using: str, state: AlertState, now: datetime, held_back: int, samples: list[dict[str, Any]]
) -> bool:
    """Within the window: count ``held_back`` alerts in all for the next summary."""
    return bool(
        _unchanged(using, state).update(suppressed=held_back, samples=samples, updated_at=now)
    )


def summaries_due(using: str, now: datetime, throttle: float) -> QuerySet[AlertState]:
    """Rows whose window ended with alerts held back: their summary is due."""
    return AlertState.objects.using(using).filter(
        suppressed__gt=0, last_sent_at__lte=now - timedelta(seconds=throttle)
    )


def record_summary_sent(using: str, state: AlertState, now: datetime) -> bool:
    """This process sends the held-back summary of ``state``: the row starts empty."""
    return bool(
        _unchanged(using, state).update(last_sent_at=now, suppressed=0, samples=[], updated_at=now)
    )


def _unchanged(using: str, state: AlertState) -> QuerySet[AlertState]:
    # The row as read: any other process's send or count since then changes one of these
    # two, and makes the update match nothing.
    rows = AlertState.objects.using(using).filter(pk=state.pk, suppressed=state.suppressed)
    if state.last_sent_at is None:
        return rows.filter(last_sent_at__isnull=True)
    return rows.filter(last_sent_at=state.last_sent_at)
