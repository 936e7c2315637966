"""Prometheus metrics, read from the database at every scrape.

Every number comes from the shared database when Prometheus asks for it, never from counters
kept in this web process's memory: one scrape of any web process sees the work of every
worker on every host, and restarting a web process resets nothing. Counters come from
``MetricsTotal``, the monotonic totals the workers maintain.

Needs the optional extra: ``pip install "taskqueue[prometheus]"``. Mount it with
``path("taskqueue/", include("taskqueue.urls"))`` and scrape ``taskqueue/metrics/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

try:
    from prometheus_client import generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImproperlyConfigured(
        "taskqueue's Prometheus metrics need the prometheus-client package: install the "
        '"prometheus" extra (pip install "taskqueue[prometheus]").'
    ) from exc

from taskqueue import store
from taskqueue.models import READY_STATES, CircuitState, MetricsTotal, TaskType
from taskqueue.monitoring import queries
from taskqueue.monitoring.metrics import TIME_BUCKETS
from taskqueue.schedules import late_schedules

logger = logging.getLogger("taskqueue.monitoring.prometheus")

# MetricsTotal columns exported as taskqueue_tasks_total{outcome=...}.
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "timed_out")

# Every metric: its name, type, help text and labels, read by collect() and describe().
FAMILIES: dict[str, tuple[type[Metric], str, list[str]]] = {
    "taskqueue_queue_depth": (
        GaugeMetricFamily,
        "Unfinished tasks by queue, task type and status (pending, scheduled, waiting, "
        "running, retrying); see taskqueue_queue_depth_approximate.",
        ["queue", "task_type", "status"],
    ),
    "taskqueue_queue_depth_approximate": (
        GaugeMetricFamily,
        "1 when some queue depths are PostgreSQL planner estimates (a task type with over "
        f"{queries.GROUP_EXACT_LIMIT} tasks in one status), 0 when every one is exact.",
        [],
    ),
    "taskqueue_oldest_pending_seconds": (
        GaugeMetricFamily,
        "Seconds the oldest due, unclaimed task has waited past its run_at, by queue and "
        "task type; 0 when every ready task is scheduled in the future.",
        ["queue", "task_type"],
    ),
    "taskqueue_tasks": (
        CounterMetricFamily,
        "Task outcomes recorded by every worker since the first one ran, by task type, "
        "queue and outcome (failed counts failed attempts, retried ones included).",
        ["task_type", "queue", "outcome"],
    ),
    "taskqueue_task_run_seconds": (
        HistogramMetricFamily,
        "Run time of task attempts, by task type and queue.",
        ["task_type", "queue"],
    ),
    "taskqueue_workers_live": (
        GaugeMetricFamily,
        "Workers running and heartbeating within STALE_AFTER seconds, on every host.",
        [],
    ),
    "taskqueue_workers_live_by_host": (
        GaugeMetricFamily,
        "Live workers by host.",
        ["host"],
    ),
    "taskqueue_worker_slots_live": (
        GaugeMetricFamily,
        "Handler slots (concurrency) of the live workers, summed.",
        [],
    ),
    "taskqueue_worker_tasks_in_hand": (
        GaugeMetricFamily,
        "Running tasks claimed by the live workers, summed.",
        [],
    ),
    "taskqueue_dead_letters_unreviewed": (
        GaugeMetricFamily,
        "Dead letters nobody has marked reviewed, and not retried since.",
        [],
    ),
    "taskqueue_circuit_open": (
        GaugeMetricFamily,
        "1 while the circuit breaker of a task type is open or half open (probing), "
        "0 when closed; one series per task type known to the database.",
        ["task_type"],
    ),
    "taskqueue_schedules_late": (
        GaugeMetricFamily,
        "Enabled schedules whose run has not succeeded by its deadline (slot + grace).",
        [],
    ),
    "taskqueue_schedule_late_seconds": (
        GaugeMetricFamily,
        "Seconds past its deadline, for each late schedule (others have no series).",
        ["schedule", "task_type"],
    ),
}


def family(name: str) -> Any:
    """An empty metric family of ``FAMILIES``, ready for samples (``add_metric`` differs by
    kind, hence ``Any``)."""
    kind, documentation, labels = FAMILIES[name]
    return kind(name, documentation, labels=labels)  # type: ignore[call-arg]


class TaskqueueCollector(Collector):
    """Reads the queue's state from the database each time the registry is collected."""

    def __init__(self, using: str | None = None) -> None:
        self._using = using

    @property
    def using(self) -> str:
        # Looked up per scrape, so override_settings and a changed DATABASE apply.
        return self._using or store.database_alias()

    def describe(self) -> Iterator[Metric]:
        # Names without values: registering on a registry that checks for clashes (the
        # global one does) must not query a database that may not even be migrated yet.
        for name in FAMILIES:
            yield family(name)

    def collect(self) -> Iterator[Metric]:
        using = self.using
        snapshot = queries.queue_snapshot(using)
        yield from self._queue_metrics(snapshot)
        yield from self._totals(using)
        yield from self._workers(using)
        yield self._dead_letters(using)
        yield self._circuits(using)
        yield from self._schedules(snapshot.now)

    def _queue_metrics(self, snapshot: queries.QueueSnapshot) -> Iterable[Metric]:
        depth = family("taskqueue_queue_depth")
        approximate = family("taskqueue_queue_depth_approximate")
        oldest = family("taskqueue_oldest_pending_seconds")
        depths: dict[tuple[str, str, str], float] = {}
        oldest_age: dict[tuple[str, str], float] = {}
        for group in snapshot.groups:
            key = (group.queue, group.task_type)
            depths[(*key, group.status)] = depths.get((*key, group.status), 0) + group.count
            # Only ready states wait to be claimed: a running task's run_at is history.
            if group.status in READY_STATES:
                age = 0.0
                if group.oldest_due_at is not None:
                    age = max(0.0, (snapshot.now - group.oldest_due_at).total_seconds())
                oldest_age[key] = max(oldest_age.get(key, 0.0), age)
        for labels, count in sorted(depths.items()):
            depth.add_metric(list(labels), count)
        approximate.add_metric([], 1 if any(g.approximate for g in snapshot.groups) else 0)
        for labels, age in sorted(oldest_age.items()):
            oldest.add_metric(list(labels), age)
        return depth, approximate, oldest

    def _totals(self, using: str) -> Iterable[Metric]:
        totals = family("taskqueue_tasks")
        run_time = family("taskqueue_task_run_seconds")
        for total in MetricsTotal.objects.using(using).order_by("task_type", "queue"):
            labels = [total.task_type, total.queue]
            for outcome in OUTCOMES:
                totals.add_metric([*labels, outcome], getattr(total, outcome))
            run_time.add_metric(
                labels, cumulative_buckets(total.run_histogram), sum_value=total.run_seconds
            )
        return totals, run_time

    def _workers(self, using: str) -> Iterable[Metric]:
        live = family("taskqueue_workers_live")
        by_host = family("taskqueue_workers_live_by_host")
        slots = family("taskqueue_worker_slots_live")
        in_hand = family("taskqueue_worker_tasks_in_hand")
        workers = queries.live_workers(using)
        hosts: dict[str, int] = {}
        for worker in workers:
            hosts[worker["host"]] = hosts.get(worker["host"], 0) + 1
        for host, count in sorted(hosts.items()):
            by_host.add_metric([host], count)
        live.add_metric([], len(workers))
        slots.add_metric([], sum(worker["concurrency"] for worker in workers))
        in_hand.add_metric([], sum(worker["tasks_in_hand"] for worker in workers))
        return live, by_host, slots, in_hand

    def _dead_letters(self, using: str) -> Metric:
        unreviewed = family("taskqueue_dead_letters_unreviewed")
        unreviewed.add_metric([], queries.unreviewed_dead_letters(using))
        return unreviewed

    def _circuits(self, using: str) -> Metric:
        circuit = family("taskqueue_circuit_open")
        # Every type, not only the open ones (queries.open_circuits): a closed breaker must
        # read 0, so that an alert resolves instead of its series vanishing.
        for name, state in (
            TaskType.objects.using(using).order_by("name").values_list("name", "circuit_state")
        ):
            circuit.add_metric([name], 0 if state == CircuitState.CLOSED else 1)
        return circuit

    def _schedules(self, now: datetime) -> Iterable[Metric]:
        late = late_schedules(now)
        count = family("taskqueue_schedules_late")
        count.add_metric([], len(late))
        late_by = family("taskqueue_schedule_late_seconds")
        for schedule in late:
            late_by.add_metric([schedule.name, schedule.task_type], schedule.late_by)
        return count, late_by


def cumulative_buckets(histogram: list[int] | None) -> list[tuple[str, float]]:
    """Prometheus ``le`` buckets (cumulative, ending with +Inf) from per-bucket counts of
    ``TIME_BUCKETS`` (one count per bound, then one for everything above the last)."""
    counts = [int(c) for c in (histogram or [])]
    # A histogram written with another bucket list: keep every count, the extra in +Inf.
    counts = counts + [0] * (len(TIME_BUCKETS) + 1 - len(counts))
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(TIME_BUCKETS, counts, strict=False):
        running += count
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", sum(counts)))
    return buckets


# A registry of our own: the global one would mix in (and be mixed into by) whatever else
# the project registers, and collect our database queries at import of unrelated code.
registry = CollectorRegistry(auto_describe=False)
registry.register(TaskqueueCollector())


def exposition(target: CollectorRegistry | None = None) -> bytes:
    """The metrics in the Prometheus text format, collected now."""
    return generate_latest(target or registry)


def metrics_response(request: HttpRequest) -> HttpResponse:
    """The metrics, collected now, in the format the scraper asks for (OpenMetrics or the
    Prometheus text format). No access check here: ``taskqueue.views.metrics_view`` is the
    view, behind the monitoring access rules."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encoder(registry)
    except DatabaseError as exc:
        # A 503, not a 500: during an outage every scrape would mail a traceback to ADMINS.
        # Prometheus records the failed scrape (up == 0) either way.
        logger.warning("taskqueue metrics unavailable: %s", exc)
        return HttpResponse(
            f"taskqueue metrics unavailable: the database did not answer ({type(exc).__name__})\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(body, content_type=content_type)
