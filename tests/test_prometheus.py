"""Prometheus metrics: values read from the database at scrape time, the exposition format,
histogram consistency, who may scrape, and the optional dependency."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError
from django.test import Client
from django.urls import reverse
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

import taskqueue
from taskqueue.models import (
    CircuitState,
    DeadLetter,
    MetricsTotal,
    Schedule,
    Task,
    TaskStatus,
    TaskType,
    Worker,
    WorkerStatus,
)
from taskqueue.monitoring import prometheus, queries
from taskqueue.monitoring.metrics import TIME_BUCKETS
from tests.conftest import REPO_ROOT, wait_for, worker_env
from tests.factories import TaskFactory, UserFactory, database_now, past

TOKEN = "prometheus-scrape-token-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str | None = None) -> Samples:
    """Parse an exposition (default: collect one now) into {(sample name, labels): value}."""
    if text is None:
        text = prometheus.exposition().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def named(samples: Samples, name: str) -> Samples:
    return {key: v for key, v in samples.items() if key[0] == name}


def histogram(size: int = len(TIME_BUCKETS) + 1, **counts: int) -> list[int]:
    """Per-bucket counts with ``b<i>=n`` set (bucket i of TIME_BUCKETS, b15 = above all)."""
    result = [0] * size
    for key, count in counts.items():
        result[int(key[1:])] = count
    return result


@pytest.mark.django_db
def test_queue_depth_and_oldest_pending_by_queue_and_type() -> None:
    TaskFactory(task_type="email", queue="emails", run_at=past(120))
    TaskFactory(task_type="email", queue="emails", run_at=past(10))
    TaskFactory(task_type="email", queue="emails", status=TaskStatus.RETRYING, run_at=past(30))
    TaskFactory(task_type="email", queue="emails", status=TaskStatus.RUNNING, run_at=past(900))
    TaskFactory(
        task_type="email",
        queue="emails",
        status=TaskStatus.SCHEDULED,
        run_at=database_now() + timedelta(hours=1),
    )
    # Ready, but not due yet: present with an oldest age of 0, not absent.
    TaskFactory(
        task_type="report",
        queue="reports",
        status=TaskStatus.SCHEDULED,
        run_at=database_now() + timedelta(hours=1),
    )
    TaskFactory(task_type="report", queue="reports", status=TaskStatus.WAITING, run_at=past(600))
    # Finished tasks are history, not depth.
    for status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        TaskFactory(task_type="email", queue="emails", status=status, run_at=past(5000))

    samples = scrape()

    depth = named(samples, "taskqueue_queue_depth")
    assert depth == {
        ("taskqueue_queue_depth", (("queue", q), ("status", s), ("task_type", t))): n
        for q, t, s, n in [
            ("emails", "email", "pending", 2),
            ("emails", "email", "retrying", 1),
            ("emails", "email", "running", 1),
            ("emails", "email", "scheduled", 1),
            ("reports", "report", "scheduled", 1),
            ("reports", "report", "waiting", 1),
        ]
    }
    # The pending task due 120 s ago, not the running one (its run_at is history).
    email_age = value(
        samples, "taskqueue_oldest_pending_seconds", queue="emails", task_type="email"
    )
    assert email_age is not None and 120 <= email_age < 180
    assert (
        value(samples, "taskqueue_oldest_pending_seconds", queue="reports", task_type="report") == 0
    )
    assert len(named(samples, "taskqueue_oldest_pending_seconds")) == 2


@pytest.mark.django_db
def test_totals_and_run_time_histogram_from_metrics_totals() -> None:
    MetricsTotal.objects.create(
        task_type="email",
        queue="emails",
        succeeded=40,
        failed=7,
        retried=5,
        dead_lettered=2,
        cancelled=1,
        timed_out=3,
        run_seconds=61.5,
        run_histogram=histogram(b0=10, b4=20, b7=15, b15=2),
    )
    MetricsTotal.objects.create(
        task_type="email", queue="bulk", succeeded=3, run_seconds=0.5, run_histogram=[]
    )

    samples = scrape()

    expected = {"succeeded": 40, "failed": 7, "retried": 5, "dead_lettered": 2}
    expected |= {"cancelled": 1, "timed_out": 3}
    for outcome, count in expected.items():
        got = value(
            samples, "taskqueue_tasks_total", task_type="email", queue="emails", outcome=outcome
        )
        assert got == count, outcome
    assert (
        value(
            samples, "taskqueue_tasks_total", task_type="email", queue="bulk", outcome="succeeded"
        )
        == 3
    )
    assert len(named(samples, "taskqueue_tasks_total")) == 12

    labels = {"task_type": "email", "queue": "emails"}
    buckets = {
        float(dict(key[1])["le"]): v
        for key, v in named(samples, "taskqueue_task_run_seconds_bucket").items()
        if dict(key[1])["queue"] == "emails"
    }
    assert sorted(buckets) == [*TIME_BUCKETS, float("inf")]
    assert buckets[0.005] == 10
    assert buckets[0.05] == 10  # cumulative: nothing between 0.005 and 0.05
    assert buckets[0.1] == 30
    assert buckets[1.0] == 45
    assert buckets[1800.0] == 45
    assert buckets[float("inf")] == 47
    assert value(samples, "taskqueue_task_run_seconds_count", **labels) == 47
    assert value(samples, "taskqueue_task_run_seconds_sum", **labels) == 61.5
    # A type with no recorded run yet: a histogram of zeros, not a missing or broken one.
    assert value(samples, "taskqueue_task_run_seconds_count", task_type="email", queue="bulk") == 0


def test_cumulative_buckets_never_decrease_and_end_at_the_count() -> None:
    counts = [3, 0, 1, 4, 0, 0, 2, 9, 1, 0, 0, 5, 0, 1, 0, 7]
    buckets = prometheus.cumulative_buckets(counts)
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert buckets[-1] == ("+Inf", sum(counts))
    assert [le for le, _ in buckets[:-1]] == [repr(b) for b in TIME_BUCKETS]
    # A histogram from another bucket list (longer): nothing lost, the excess lands in +Inf.
    longer = prometheus.cumulative_buckets([1] * (len(TIME_BUCKETS) + 3))
    assert longer[-1] == ("+Inf", len(TIME_BUCKETS) + 3)
    assert longer[-2][1] == len(TIME_BUCKETS)


@pytest.mark.django_db
def test_workers_dead_letters_circuits_and_late_schedules(settings: Any) -> None:
    # Live means a heartbeat within STALE_AFTER (3 s in the tests): room for a slow machine.
    settings.TASKQUEUE = {**settings.TASKQUEUE, "STALE_AFTER": 600}
    for number, host in enumerate(["web-1", "web-1", "web-2"]):
        Worker.objects.create(
            id=f"{host}-{number}",
            hostname=host,
            pid=100 + number,
            concurrency=4,
            status=WorkerStatus.RUNNING,
            queues=["default"],
        )
    # Not live: silent past STALE_AFTER, and stopped.
    Worker.objects.create(
        id="frozen", hostname="web-3", pid=1, concurrency=4, status=WorkerStatus.RUNNING
    )
    Worker.objects.filter(id="frozen").update(last_heartbeat=past(3600))
    Worker.objects.create(
        id="gone", hostname="web-3", pid=2, concurrency=4, status=WorkerStatus.STOPPED
    )

    failed = TaskFactory(status=TaskStatus.FAILED)
    for reviewed in (False, False, True):
        DeadLetter.objects.create(task=failed, task_type="noop", reviewed=reviewed)

    TaskType.objects.create(name="flaky", circuit_state=CircuitState.OPEN)
    TaskType.objects.create(name="probing", circuit_state=CircuitState.HALF_OPEN)
    TaskType.objects.create(name="fine")

    late = Schedule.objects.create(name="nightly", task_type="noop", cron="* * * * *", grace=0)
    Schedule.objects.filter(pk=late.pk).update(created_at=past(7200), updated_at=past(7200))
    Schedule.objects.create(name="yearly", task_type="noop", cron="0 0 1 1 *")

    samples = scrape()

    assert value(samples, "taskqueue_workers_live") == 3
    assert named(samples, "taskqueue_workers_live_by_host") == {
        ("taskqueue_workers_live_by_host", (("host", "web-1"),)): 2,
        ("taskqueue_workers_live_by_host", (("host", "web-2"),)): 1,
    }
    assert value(samples, "taskqueue_worker_slots_live") == 12
    assert value(samples, "taskqueue_dead_letters_unreviewed") == 2
    assert value(samples, "taskqueue_circuit_open", task_type="flaky") == 1
    assert value(samples, "taskqueue_circuit_open", task_type="probing") == 1
    assert value(samples, "taskqueue_circuit_open", task_type="fine") == 0
    assert value(samples, "taskqueue_schedules_late") == 1
    late_by = value(
        samples, "taskqueue_schedule_late_seconds", schedule="nightly", task_type="noop"
    )
    assert late_by is not None and late_by > 3600
    assert len(named(samples, "taskqueue_schedule_late_seconds")) == 1


def test_registering_the_collector_reads_no_database() -> None:
    # No django_db mark: any query here fails the test. A registry that checks names for
    # clashes (as the global one does) calls describe(), never collect(), at registration.
    registry = CollectorRegistry(auto_describe=True)
    registry.register(prometheus.TaskqueueCollector())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(prometheus.TaskqueueCollector())


@pytest.mark.django_db
def test_collect_yields_exactly_the_described_families() -> None:
    collector = prometheus.TaskqueueCollector()
    described = [(f.name, f.type) for f in collector.describe()]
    assert [(f.name, f.type) for f in collector.collect()] == described
    assert [name for name, _ in described] == list(prometheus.FAMILIES)


@pytest.mark.django_db
def test_an_empty_queue_still_reports_its_zero_gauges() -> None:
    samples = scrape()
    # Alerts such as "taskqueue_workers_live == 0" need the zero, not an absent series.
    assert value(samples, "taskqueue_workers_live") == 0
    assert value(samples, "taskqueue_worker_slots_live") == 0
    assert value(samples, "taskqueue_dead_letters_unreviewed") == 0
    assert value(samples, "taskqueue_schedules_late") == 0
    assert not named(samples, "taskqueue_queue_depth")


@pytest.mark.django_db
def test_each_scrape_reads_the_database_again() -> None:
    assert not named(scrape(), "taskqueue_queue_depth")
    TaskFactory(task_type="email", queue="emails", run_at=past(5))
    assert (
        value(
            scrape(), "taskqueue_queue_depth", queue="emails", task_type="email", status="pending"
        )
        == 1
    )
    Task.objects.update(status=TaskStatus.COMPLETED)
    assert not named(scrape(), "taskqueue_queue_depth")


def test_import_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "taskqueue.monitoring.prometheus")
    with pytest.raises(ImproperlyConfigured, match=r"taskqueue\[prometheus\]"):
        importlib.import_module("taskqueue.monitoring.prometheus")


# --- The view: who may scrape, formats --------------------------------------------------------


@pytest.fixture
def tokens(settings: Any) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "MONITORING_TOKENS": [TOKEN]}


@pytest.mark.django_db
@pytest.mark.usefixtures("tokens")
def test_staff_and_token_scrape_anonymous_and_non_staff_do_not(client: Client) -> None:
    TaskFactory(task_type="email", queue="emails", run_at=past(5))
    url = reverse("taskqueue:metrics")

    anonymous = client.get(url)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    assert b"taskqueue_" not in anonymous.content
    assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    client.force_login(UserFactory(is_staff=False))
    assert client.get(url).status_code == 403

    by_token = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    staff = Client()
    staff.force_login(UserFactory(is_staff=True))
    by_staff = staff.get(url)
    for response in (by_token, by_staff):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
        samples = scrape(response.content.decode())
        assert (
            value(
                samples,
                "taskqueue_queue_depth",
                queue="emails",
                task_type="email",
                status="pending",
            )
            == 1
        )
    assert staff.post(url).status_code == 405


@pytest.mark.django_db
@pytest.mark.usefixtures("tokens")
def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    MetricsTotal.objects.create(
        task_type="email",
        queue="emails",
        succeeded=4,
        run_seconds=2.0,
        run_histogram=histogram(b7=4),
    )
    response = Client().get(
        reverse("taskqueue:metrics"),
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(response.content.decode())}
    assert families["taskqueue_tasks"].type == "counter"
    assert families["taskqueue_task_run_seconds"].type == "histogram"
    succeeded = [
        s.value
        for s in families["taskqueue_tasks"].samples
        if s.name == "taskqueue_tasks_total" and s.labels["outcome"] == "succeeded"
    ]
    assert succeeded == [4]


@pytest.mark.django_db
def test_scrape_without_prometheus_client_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "taskqueue.monitoring.prometheus")
    staff = Client()
    staff.force_login(UserFactory(is_staff=True))
    with pytest.raises(ImproperlyConfigured, match=r"taskqueue\[prometheus\]"):
        staff.get(reverse("taskqueue:metrics"))
    # The access check comes first: strangers learn nothing about the installation.
    assert Client().get(reverse("taskqueue:metrics")).status_code == 401


@pytest.mark.django_db
@pytest.mark.usefixtures("tokens")
def test_a_database_outage_answers_503_not_a_server_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(using: str | None = None) -> None:
        raise OperationalError("connection refused")

    # Fault injection at the query layer: a real outage cannot be staged in-process.
    monkeypatch.setattr(queries, "queue_snapshot", unreachable)
    response = Client().get(reverse("taskqueue:metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert b"OperationalError" in response.content
    assert b"connection refused" not in response.content


def test_the_rest_of_taskqueue_never_imports_prometheus_client() -> None:
    # A fresh interpreter: this one has imported it already.
    code = (
        "import sys, django; django.setup(); "
        "import taskqueue.urls, taskqueue.views, taskqueue.worker.loop, taskqueue.admin; "
        "from django.urls import reverse; reverse('admin:index'); "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=worker_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- End to end: totals written by real workers -------------------------------------------------


def test_totals_add_up_across_worker_processes(
    run_worker: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # Two workers (two processes, one after the other) record into the same totals.
    for n in range(3):
        taskqueue.enqueue("add", {"a": n, "b": 1})
    taskqueue.enqueue("always_fails", {})
    run_worker("--burst")
    for n in range(2):
        taskqueue.enqueue("add", {"a": n, "b": 2})
    run_worker("--burst")

    def totals() -> Samples | None:
        samples = scrape()
        done = value(
            samples, "taskqueue_tasks_total", task_type="add", queue="default", outcome="succeeded"
        )
        return samples if done == 5 else None

    samples = wait_for(totals, timeout=10, message="the workers' totals")
    assert isinstance(samples, dict)
    fails = {"task_type": "always_fails", "queue": "default"}
    expected = {"failed": 3, "retried": 2, "dead_lettered": 1, "succeeded": 0}
    for outcome, count in expected.items():
        assert value(samples, "taskqueue_tasks_total", outcome=outcome, **fails) == count
    adds = {"task_type": "add", "queue": "default"}
    for labels, attempts in ((adds, 5), (fails, 3)):
        assert value(samples, "taskqueue_task_run_seconds_count", **labels) == attempts
        buckets = [
            v
            for key, v in named(samples, "taskqueue_task_run_seconds_bucket").items()
            if dict(key[1])["task_type"] == labels["task_type"]
        ]
        assert buckets == sorted(buckets) and max(buckets) == attempts
        run_sum = value(samples, "taskqueue_task_run_seconds_sum", **labels)
        assert run_sum is not None and 0 < run_sum < 30
    assert not named(samples, "taskqueue_queue_depth")
    assert value(samples, "taskqueue_dead_letters_unreviewed") == 1
    # Burst workers have stopped: none is live any more.
    assert value(samples, "taskqueue_workers_live") == 0
