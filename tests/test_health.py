"""Health: degraded and unhealthy exactly at the thresholds (per-queue overrides too), work
nobody serves, open circuits, late schedules; the command's exit codes; the
django-health-check plugin."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.test import RequestFactory

from taskqueue.models import CircuitState, Schedule, TaskStatus, TaskType
from taskqueue.monitoring import health
from tests.factories import TaskFactory, past
from tests.test_stats import dead_task, live_worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def thresholds(settings: Any) -> Any:
    """Set HEALTH sub-keys for the test."""

    def configure(**values: Any) -> None:
        settings.TASKQUEUE = {**settings.TASKQUEUE, "HEALTH": values}

    return configure


def codes(verdict: health.Verdict) -> list[tuple[str, str]]:
    return [(issue.code, issue.severity) for issue in verdict.issues]


def due(count: int, queue: str = "default", age: float = 5, task_type: str = "noop") -> None:
    TaskFactory.create_batch(count, queue=queue, task_type=task_type, run_at=past(age))


def test_an_empty_queue_is_healthy() -> None:
    verdict = health.check()
    assert verdict.status == "healthy" and verdict.issues == []
    assert verdict.http_status == 200 and verdict.exit_code == 0


def test_queue_depth_degrades_over_the_threshold_and_fails_over_twice_it(thresholds) -> None:
    thresholds(MAX_PENDING=2)
    live_worker()
    # Future and finished tasks are not depth.
    TaskFactory(status=TaskStatus.SCHEDULED, run_at=past(-600))
    TaskFactory(status=TaskStatus.COMPLETED)
    due(2)
    assert health.check().status == "healthy"
    due(1)
    verdict = health.check()
    assert codes(verdict) == [("queue_depth", "degraded")]
    assert verdict.issues[0].data["value"] == 3 and verdict.issues[0].data["threshold"] == 2
    due(1)
    assert health.check().status == "degraded"  # 4 = twice the threshold, not over it
    due(1)
    verdict = health.check()
    assert codes(verdict) == [("queue_depth", "unhealthy")]
    assert verdict.http_status == 503 and verdict.exit_code == 2


def test_a_queue_override_applies_to_that_queue_only(thresholds) -> None:
    thresholds(MAX_PENDING=10, QUEUES={"emails": {"MAX_PENDING": 1}})
    live_worker(queues=["default", "emails"])
    due(2, queue="default")
    due(2, queue="emails")
    verdict = health.check()
    assert codes(verdict) == [("queue_depth", "degraded")]
    assert verdict.issues[0].data["queue"] == "emails"
    due(1, queue="emails")
    assert codes(health.check()) == [("queue_depth", "unhealthy")]


def test_oldest_pending_age_thresholds(thresholds) -> None:
    thresholds(MAX_OLDEST_PENDING=100, QUEUES={"slow": {"MAX_OLDEST_PENDING": 1000}})
    live_worker(queues=["default", "slow"])
    due(1, age=80)
    due(1, queue="slow", age=900)
    assert health.check().status == "healthy"
    due(1, age=150)
    verdict = health.check()
    assert codes(verdict) == [("oldest_pending", "degraded")]
    assert verdict.issues[0].data["value"] == pytest.approx(150, abs=5)
    due(1, age=250)
    assert codes(health.check()) == [("oldest_pending", "unhealthy")]


def test_unreviewed_dead_letters_over_the_threshold_degrade(thresholds) -> None:
    thresholds(MAX_DEAD_UNREVIEWED=2)
    dead_task()
    dead_task()
    dead_task(reviewed=True)
    assert health.check().status == "healthy"
    dead_task()
    verdict = health.check()
    assert codes(verdict) == [("dead_letters", "degraded")]
    assert verdict.issues[0].data == {"value": 3, "threshold": 2}


def test_due_work_without_a_live_worker_serving_it_is_unhealthy() -> None:
    due(2, task_type="email", queue="emails")
    verdict = health.check()
    assert codes(verdict) == [("no_worker", "unhealthy")]
    assert verdict.issues[0].data == {"task_type": "email", "queue": "emails", "due": 2}
    # A live worker for the type but another queue does not serve it; a stale one neither.
    live_worker("host:1:a", task_types=["email"], queues=["default"])
    live_worker("host:2:b", task_types=["email"], queues=["emails"], heartbeat_age=60)
    assert codes(health.check()) == [("no_worker", "unhealthy")]
    live_worker("host:3:c", task_types=["email"], queues=["emails"])
    assert health.check().status == "healthy"


def test_paused_types_and_future_work_need_no_worker() -> None:
    TaskFactory(task_type="later", status=TaskStatus.SCHEDULED, run_at=past(-600))
    due(1, task_type="held")
    TaskType.objects.create(name="held", paused=True)
    assert health.check().status == "healthy"


def test_open_circuit_and_late_schedule_degrade() -> None:
    TaskType.objects.create(
        name="flaky", circuit_state=CircuitState.OPEN, circuit_opened_at=past(1)
    )
    assert codes(health.check()) == [("circuit_open", "degraded")]
    TaskType.objects.filter(name="flaky").update(circuit_state=CircuitState.CLOSED)
    schedule = Schedule.objects.create(name="minutely", task_type="noop", cron="* * * * *")
    Schedule.objects.filter(pk=schedule.pk).update(created_at=past(3600), updated_at=past(3600))
    verdict = health.check()
    assert codes(verdict) == [("schedule_late", "degraded")]
    assert verdict.issues[0].data["name"] == "minutely"


def test_the_worst_issue_decides(thresholds) -> None:
    thresholds(MAX_DEAD_UNREVIEWED=1)
    dead_task()
    dead_task()
    due(1, task_type="orphan")
    verdict = health.check()
    assert verdict.status == "unhealthy"
    assert sorted(codes(verdict)) == [("dead_letters", "degraded"), ("no_worker", "unhealthy")]


def run_health(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("taskqueue_health", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_command_exit_codes_and_reasons(thresholds) -> None:
    thresholds(MAX_DEAD_UNREVIEWED=1)
    assert run_health() == (0, "healthy\n")
    dead_task()
    dead_task()
    code, text = run_health()
    assert code == 1 and text.startswith("degraded")
    assert "dead_letters: 2 dead letters are unreviewed (threshold 1)" in text
    due(1, task_type="orphan")
    code, text = run_health("--json")
    assert code == 2
    body = json.loads(text)
    assert body["status"] == "unhealthy"
    assert {issue["code"] for issue in body["issues"]} == {"dead_letters", "no_worker"}


def test_health_check_plugin(thresholds) -> None:
    pytest.importorskip("health_check")
    from health_check.exceptions import ServiceUnavailable, ServiceWarning

    from taskqueue.contrib.health_check import TaskQueueHealthCheck

    TaskQueueHealthCheck().run()  # healthy: no exception
    thresholds(MAX_DEAD_UNREVIEWED=1)
    dead_task()
    dead_task()
    TaskQueueHealthCheck().run()  # degraded passes by default
    with pytest.raises(ServiceWarning, match="2 dead letters"):
        TaskQueueHealthCheck(degraded_is_warning=True).run()
    due(1, task_type="orphan")
    with pytest.raises(ServiceUnavailable, match="no live worker serves them"):
        TaskQueueHealthCheck().run()


@pytest.mark.django_db(transaction=True)
def test_health_check_plugin_on_a_health_check_page() -> None:
    pytest.importorskip("health_check")
    from health_check.views import HealthCheckView

    from taskqueue.contrib.health_check import TaskQueueHealthCheck

    view = HealthCheckView.as_view(checks=[TaskQueueHealthCheck])
    request = RequestFactory().get("/ht/", HTTP_ACCEPT="application/json")
    response = asyncio.run(view(request))
    assert response.status_code == 200
    assert json.loads(response.content) == {"TaskQueueHealthCheck(degraded_is_warning=False)": "OK"}
    due(1, task_type="orphan")
    response = asyncio.run(view(request))
    assert response.status_code == 500
    [message] = json.loads(response.content).values()
    assert "task queue unhealthy" in message and "'orphan'" in message


@pytest.mark.parametrize(
    ("taskqueue", "message"),
    [
        ({"HEALTH": {"MAX_PENDING": 0}}, "TASKQUEUE['HEALTH']['MAX_PENDING'] must be a positive"),
        ({"HEALTH": {"PUBLIC": "yes"}}, "TASKQUEUE['HEALTH']['PUBLIC'] must be True or False"),
        ({"HEALTH": {"QUEUES": ["emails"]}}, "TASKQUEUE['HEALTH']['QUEUES'] must be a dict"),
        (
            {"HEALTH": {"QUEUES": {"emails": {"MAX_DEAD": 1}}}},
            "Unknown key 'MAX_DEAD' in TASKQUEUE['HEALTH']['QUEUES']['emails']",
        ),
        (
            {"HEALTH": {"QUEUES": {"emails": {"MAX_PENDING": -1}}}},
            "['QUEUES']['emails']['MAX_PENDING'] must be a positive",
        ),
        ({"MONITORING_TOKENS": "secret"}, "TASKQUEUE['MONITORING_TOKENS'] must be a list"),
        ({"MONITORING_TOKENS": ["short"]}, "at least 16 characters"),
    ],
)
def test_bad_health_and_token_settings_are_named(
    settings: Any, taskqueue: dict[str, Any], message: str
) -> None:
    from taskqueue.checks import check_settings

    settings.TASKQUEUE = {**settings.TASKQUEUE, **taskqueue}
    errors = [error.msg for error in check_settings()]
    assert any(message in error for error in errors), errors
    assert "short" not in " ".join(errors) and "'secret'" not in " ".join(errors)


def test_good_health_and_token_settings_pass(settings: Any) -> None:
    from taskqueue.checks import check_settings

    settings.TASKQUEUE = {
        **settings.TASKQUEUE,
        "HEALTH": {
            "MAX_PENDING": 5,
            "QUEUES": {"emails": {"MAX_OLDEST_PENDING": 60}},
            "PUBLIC": True,
        },
        "MONITORING_TOKENS": ["0123456789abcdef0123"],
    }
    assert check_settings() == []
