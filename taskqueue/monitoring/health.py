"""The health verdict: ``healthy``, ``degraded`` or ``unhealthy``, and the issues behind it.

Rules (thresholds in ``TASKQUEUE["HEALTH"]``, the first two overridable per queue under
``QUEUES``); "over" means strictly greater than:

=======================  =======================================  ==========================
code                     degraded when                            unhealthy when
=======================  =======================================  ==========================
``queue_depth``          due tasks of a queue over MAX_PENDING    over 2 x MAX_PENDING
``oldest_pending``       its oldest due task waited over          over 2 x MAX_OLDEST_PENDING
                         MAX_OLDEST_PENDING seconds
``dead_letters``         unreviewed dead letters over             never
                         MAX_DEAD_UNREVIEWED
``no_worker``            never                                    due tasks of a type and
                                                                  queue that no live worker
                                                                  serves (paused types
                                                                  excepted): none serves
                                                                  the queue, or those that
                                                                  do have no handler for
                                                                  the type (rolling deploy)
``circuit_open``         a task type's circuit is open/probing    never
``schedule_late``        a schedule is late                       never
``database``             never                                    the database is unreachable
=======================  =======================================  ==========================

The worst issue decides; no issue is ``healthy``. The HTTP view answers 200 for healthy and
degraded, 503 for unhealthy; ``manage.py taskqueue_health`` exits 0, 1 or 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError

from taskqueue import store
from taskqueue.conf import settings as tq_settings
from taskqueue.models import TaskType
from taskqueue.monitoring import queries
from taskqueue.monitoring.unserved import describe, unserved_work
from taskqueue.schedules import late_schedules

logger = logging.getLogger("taskqueue.monitoring.health")

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


@dataclass
class Issue:
    code: str
    severity: str  # DEGRADED or UNHEALTHY
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message, **self.data}


@dataclass
class Verdict:
    status: str
    issues: list[Issue]
    checked_at: datetime

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_dict(self, details: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "checked_at": self.checked_at.isoformat()}
        if details:
            body["issues"] = [issue.as_dict() for issue in self.issues]
        return body


def thresholds(queue: str | None = None) -> dict[str, Any]:
    """The HEALTH thresholds, with ``queue``'s overrides applied."""
    health = tq_settings.HEALTH
    values = {
        "MAX_PENDING": health["MAX_PENDING"],
        "MAX_OLDEST_PENDING": health["MAX_OLDEST_PENDING"],
        "MAX_DEAD_UNREVIEWED": health["MAX_DEAD_UNREVIEWED"],
    }
    if queue is not None:
        values.update((health.get("QUEUES") or {}).get(queue, {}))
    return values


def _graded(value: float, limit: float) -> str | None:
    """None at or under the limit, degraded over it, unhealthy over twice it."""
    if value > 2 * limit:
        return UNHEALTHY
    if value > limit:
        return DEGRADED
    return None


def check(using: str | None = None) -> Verdict:
    """Compute the verdict now; never raises for a database outage (that is an issue)."""
    using = using or store.database_alias()
    try:
        issues = _issues(using)
    except DatabaseError as exc:
        logger.warning("taskqueue health: database unreachable: %s", exc)
        issues = [
            Issue(
                "database",
                UNHEALTHY,
                f"the queue database {using!r} is unreachable ({type(exc).__name__})",
            )
        ]
    status = max((issue.severity for issue in issues), key=_RANK.__getitem__, default=HEALTHY)
    return Verdict(status=status, issues=issues, checked_at=datetime.now(UTC))


def _issues(using: str) -> list[Issue]:
    snapshot = queries.queue_snapshot(using)
    issues: list[Issue] = []
    for queue, entry in snapshot.by_queue().items():
        limits = thresholds(queue)
        depth = entry["due"]
        severity = _graded(depth, limits["MAX_PENDING"])
        if severity:
            issues.append(
                Issue(
                    "queue_depth",
                    severity,
                    f"queue {queue!r} has {depth} due tasks (threshold {limits['MAX_PENDING']})",
                    {
                        "queue": queue,
                        "value": depth,
                        "threshold": limits["MAX_PENDING"],
                        "approximate": entry["approximate"],
                    },
                )
            )
        age = entry["oldest_pending_age"]
        severity = None if age is None else _graded(age, limits["MAX_OLDEST_PENDING"])
        if severity:
            issues.append(
                Issue(
                    "oldest_pending",
                    severity,
                    f"the oldest due task of queue {queue!r} has waited {age:.0f} s "
                    f"(threshold {limits['MAX_OLDEST_PENDING']} s)",
                    {"queue": queue, "value": age, "threshold": limits["MAX_OLDEST_PENDING"]},
                )
            )
    dead = queries.unreviewed_dead_letters(using)
    limit = thresholds()["MAX_DEAD_UNREVIEWED"]
    if dead > limit:
        issues.append(
            Issue(
                "dead_letters",
                DEGRADED,
                f"{dead} dead letters are unreviewed (threshold {limit})",
                {"value": dead, "threshold": limit},
            )
        )
    workers = queries.live_workers(using)
    unserved = unserved_work(snapshot, workers, using)
    paused = set(
        TaskType.objects.using(using)
        .filter(paused=True, name__in={item["task_type"] for item in unserved})
        .values_list("name", flat=True)
    )
    for item in unserved:
        if item["task_type"] in paused:
            continue
        # The why is in the message; the data keeps the (type, queue, due) it always had.
        data = {key: item[key] for key in ("task_type", "queue", "due")}
        issues.append(Issue("no_worker", UNHEALTHY, describe(item), data))
    for circuit in queries.open_circuits(using):
        issues.append(
            Issue(
                "circuit_open",
                DEGRADED,
                f"the circuit of {circuit['task_type']!r} is {circuit['state']}",
                circuit,
            )
        )
    for late in late_schedules(snapshot.now):
        issues.append(
            Issue(
                "schedule_late",
                DEGRADED,
                f"schedule {late.name!r} is late by {late.late_by:.0f} s",
                late.as_dict(),
            )
        )
    return issues


__all__ = ["DEGRADED", "HEALTHY", "UNHEALTHY", "Issue", "Verdict", "check"]
