"""Retention: prune finished history, from the built-in schedule or ``taskqueue_prune``.

The built-in handler ``taskqueue.prune`` is registered by taskqueue itself, so every worker
serves it; the built-in schedule ``taskqueue-retention`` enqueues it on
``RETENTION["cron"]`` (None: no schedule, the project runs the command itself). Each run
deletes in batches of ``RETENTION["batch_size"]`` rows, each batch its own short
transaction, until nothing is left or its time budget is spent (the next run continues where
it stopped). The rules for what may go live in ``taskqueue.store.retention``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskqueue import store
from taskqueue.conf import settings as tq_settings
from taskqueue.context import TaskContext
from taskqueue.core.registry import QUEUE_PATTERN
from taskqueue.handlers import register
from taskqueue.schedules import declare_builtin
from taskqueue.schedules.cron import CronError, validate_cron

logger = logging.getLogger("taskqueue.builtins.prune")

PRUNE_TASK = "taskqueue.prune"
RETENTION_SCHEDULE = "taskqueue-retention"
# Seconds one scheduled run may spend deleting; the handler's timeout leaves room for the
# batch in flight when the budget runs out.
TIME_BUDGET = 120.0
HANDLER_TIMEOUT = 300.0

KIND_LABELS = {
    "workers": "stopped or lost workers",
    "metrics": "per-minute metrics rows",
    "events": "lifecycle events",
    "resolved_dead_letters": "resolved dead letters",
    "reviewed_dead": "reviewed dead tasks",
    "cancelled": "cancelled tasks",
    "completed": "completed tasks",
    "workflows": "empty workflows",
}


@dataclass(frozen=True)
class PruneResult:
    """Rows deleted (or, in a dry run, that would be) per kind."""

    counts: dict[str, int]
    # False when the time budget ran out or a stop was asked for with rows possibly left.
    complete: bool
    # Kinds whose age is None: never pruned.
    kept_forever: tuple[str, ...]
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        """The handler's JSON result: counts per kind, and whether the run finished."""
        return {**self.counts, "complete": self.complete}


def prune(
    *,
    batch_size: int | None = None,
    time_budget: float | None = None,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> PruneResult:
    """Delete what ``RETENTION`` says has been kept long enough; return counts per kind.

    ``time_budget`` (seconds, None: no limit) and ``should_stop`` are checked between
    batches, never inside one. ``dry_run`` deletes nothing and counts what would go.
    """
    retention = tq_settings.RETENTION
    if batch_size is None:
        batch_size = retention["batch_size"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    using = store.database_alias()
    cutoffs = store.Cutoffs.from_retention(using, retention)
    kept_forever = tuple(kind for kind in store.PRUNE_KINDS if cutoffs.before[kind] is None)
    if dry_run:
        counts = {kind: store.count_prunable(kind, using, cutoffs) for kind in store.PRUNE_KINDS}
        return PruneResult(counts, complete=True, kept_forever=kept_forever, dry_run=True)

    # A duration, not a point in time: the worker's monotonic clock is the right one here.
    deadline = None if time_budget is None else time.monotonic() + time_budget

    def out_of_time() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return bool(should_stop and should_stop())

    counts = dict.fromkeys(store.PRUNE_KINDS, 0)
    complete = True
    for kind in store.PRUNE_KINDS:
        while True:
            if out_of_time():
                complete = False
                break
            deleted = store.delete_prunable_batch(kind, using, cutoffs, batch_size)
            counts[kind] += deleted
            # A short batch means nothing more is due (or the rest is locked by someone
            # else right now: the next run gets it).
            if deleted < batch_size:
                break
        if not complete:
            break
    result = PruneResult(counts, complete=complete, kept_forever=kept_forever)
    logger.info(
        "pruned %s%s",
        ", ".join(f"{counts[kind]} {KIND_LABELS[kind]}" for kind in store.PRUNE_KINDS),
        "" if complete else " (time budget spent; the next run continues)",
        extra={"pruned": counts, "complete": complete},
    )
    return result


def prune_handler(ctx: TaskContext) -> dict[str, Any]:
    """The built-in ``taskqueue.prune`` task: one bounded pruning run."""
    return prune(time_budget=TIME_BUDGET, should_stop=lambda: ctx.cancel_requested).as_dict()


def _prune_queue() -> str:
    # Workers serve the first configured queue unless told otherwise, so the built-in task
    # goes there; "default" when QUEUES is invalid (manage.py check reports that).
    queues = tq_settings.QUEUES
    if isinstance(queues, list | tuple) and queues:
        first = queues[0]
        if isinstance(first, str) and QUEUE_PATTERN.fullmatch(first):
            return first
    return "default"


def _retention_cron() -> str | None:
    # Read at each schedule sync, so a changed setting takes effect at the next worker start.
    retention = tq_settings.RETENTION
    cron = retention.get("cron") if isinstance(retention, dict) else None
    if cron is None:
        return None
    try:
        return validate_cron(cron)
    except CronError:
        # manage.py check reports a bad RETENTION once, as E004 naming the setting, and keeps
        # run_worker from starting; the schedule machinery need not report it again.
        return None


def register_retention() -> None:
    """Register ``taskqueue.prune`` and declare the schedule that runs it (from ``ready()``)."""
    register(
        PRUNE_TASK,
        prune_handler,
        queue=_prune_queue(),
        priority="low",
        timeout=HANDLER_TIMEOUT,
        takes_context=True,
        description="Delete finished tasks, reviewed dead letters, empty workflows and old "
        "worker rows older than TASKQUEUE['RETENTION'] allows.",
    )
    # RETENTION["cron"] = None declares no schedule: the project runs taskqueue_prune itself.
    declare_builtin(
        RETENTION_SCHEDULE,
        PRUNE_TASK,
        _retention_cron,
        description="Prune finished history as TASKQUEUE['RETENTION'] says.",
    )
