"""The TaskType admin: flow control columns, pause / resume / reset circuit, permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models.functions import Now
from django.urls import reverse

import taskqueue
from taskqueue import signals, store
from taskqueue.models import CircuitState, TaskType
from taskqueue.worker.presence import register_worker
from tests.test_admin import (
    ESCAPED_SCRIPT,
    SCRIPT,
    action_names,
    messages_of,
    run_action,
    staff_client,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.django_db

TYPES_URL = reverse("admin:taskqueue_tasktype_changelist")
FLOW_ACTIONS = {"pause_task_types", "resume_task_types", "reset_circuits"}


@pytest.fixture
def types() -> dict[str, TaskType]:
    """The test handlers' TaskType rows, written as a starting worker writes them."""
    register_worker("host:1:admin", ["flow"], 1)
    return {row.name: row for row in TaskType.objects.all()}


def open_circuit(name: str, failures: int = 3) -> None:
    # Setup writes the row directly, as the breaker would have after ``failures`` failures.
    TaskType.objects.filter(name=name).update(
        circuit_state=CircuitState.OPEN, circuit_opened_at=Now(), consecutive_failures=failures
    )


def test_changelist_shows_flow_control(admin_client: Any, types: dict[str, TaskType]) -> None:
    open_circuit("flow_breaker", failures=4)
    store.pause_task_types(["flow_plain"])
    response = admin_client.get(TYPES_URL)
    page = response.content.decode()
    for header in ("Paused", "Rate limit", "Concurrency limit", "Circuit", "Consecutive failures"):
        assert header in page, header
    rows = {row.name: row for row in response.context["cl"].result_list}
    assert rows["flow_plain"].paused is True
    assert rows["flow_rated"].rate_limit == "10/s"
    assert rows["flow_limited"].concurrency_limit == 2
    assert (rows["flow_breaker"].circuit_state, rows["flow_breaker"].consecutive_failures) == (
        CircuitState.OPEN,
        4,
    )
    assert "10/s" in page and "Open" in page
    assert action_names(response) == FLOW_ACTIONS


def test_change_page_shows_the_breaker_and_stays_read_only(
    admin_client: Any, types: dict[str, TaskType]
) -> None:
    breaker = types["flow_breaker"]
    TaskType.objects.filter(pk=breaker.pk).update(description=SCRIPT)
    url = reverse("admin:taskqueue_tasktype_change", args=[breaker.pk])
    response = admin_client.get(url)
    page = response.content.decode()
    assert response.context["has_change_permission"] is False
    assert "Flow control" in page
    assert "Circuit opens after (failures)" in page and "Circuit cool-down (seconds)" in page
    assert ESCAPED_SCRIPT in page and SCRIPT not in page
    assert admin_client.post(url, {"paused": "on"}).status_code == 403
    assert TaskType.objects.get(pk=breaker.pk).paused is False


def test_pause_and_resume_actions_report_counts(
    admin_client: Any, types: dict[str, TaskType]
) -> None:
    plain, rated, limited = types["flow_plain"], types["flow_rated"], types["flow_limited"]
    store.pause_task_types(["flow_limited"])
    response = run_action(admin_client, TYPES_URL, "pause_task_types", [plain, rated, limited])
    assert messages_of(response) == ["Paused 2 task types. 1 was already paused."]
    assert set(TaskType.objects.filter(paused=True).values_list("name", flat=True)) == {
        "flow_plain",
        "flow_rated",
        "flow_limited",
    }
    logged = LogEntry.objects.filter(action_flag=CHANGE, change_message="Paused.")
    assert sorted(logged.values_list("object_repr", flat=True)) == ["flow_plain", "flow_rated"]

    response = run_action(admin_client, TYPES_URL, "resume_task_types", [plain, types["noop"]])
    assert messages_of(response) == ["Resumed 1 task type. 1 was not paused."]
    assert not TaskType.objects.get(pk=plain.pk).paused
    assert TaskType.objects.get(pk=rated.pk).paused


def test_paused_tasks_are_claimed_once_resumed_from_the_admin(
    admin_client: Any, types: dict[str, TaskType]
) -> None:
    task = taskqueue.enqueue("flow_plain", {"n": 1})
    run_action(admin_client, TYPES_URL, "pause_task_types", [types["flow_plain"]])
    assert store.claim_due_tasks("w", ["flow"], 10) == []
    run_action(admin_client, TYPES_URL, "resume_task_types", [types["flow_plain"]])
    assert [claimed.id for claimed in store.claim_due_tasks("w", ["flow"], 10)] == [task.id]


def test_reset_circuit_closes_it_and_announces_it(
    admin_client: Any, types: dict[str, TaskType], django_capture_on_commit_callbacks: Any
) -> None:
    open_circuit("flow_breaker")
    TaskType.objects.filter(name="flow_plain").update(consecutive_failures=2)
    events: list[Any] = []

    def receiver(sender: Any, event: Any, **kwargs: Any) -> None:
        events.append(event)

    signals.circuit_closed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = run_action(
                admin_client,
                TYPES_URL,
                "reset_circuits",
                [types["flow_breaker"], types["flow_plain"]],
            )
    finally:
        signals.circuit_closed.disconnect(receiver)
    assert messages_of(response) == [
        "Closed the circuit of 1 task type. 1 was already closed (its failure count is reset)."
    ]
    rows = TaskType.objects.filter(name__in=["flow_breaker", "flow_plain"])
    assert set(rows.values_list("circuit_state", "consecutive_failures", "circuit_opened_at")) == {
        (CircuitState.CLOSED, 0, None)
    }
    assert [(e.name, e.task_type, e.severity) for e in events] == [
        ("circuit_closed", "flow_breaker", "info")
    ]
    # Closed, with no other control: its tasks go back to the main claim.
    task = taskqueue.enqueue("flow_breaker", {"n": 1})
    assert [c.id for c in store.claim_due_tasks("w", ["flow"], 10)] == [task.id]


def test_actions_need_the_change_permission(
    staff_client: Any,  # noqa: F811
    types: dict[str, TaskType],
) -> None:
    open_circuit("flow_breaker")
    viewer = staff_client("view_tasktype")
    listing = viewer.get(TYPES_URL)
    assert listing.status_code == 200
    assert action_names(listing) == set()
    for action in FLOW_ACTIONS:
        run_action(viewer, TYPES_URL, action, [types["flow_plain"], types["flow_breaker"]])
    assert not TaskType.objects.filter(paused=True).exists()
    assert TaskType.objects.get(name="flow_breaker").circuit_state == CircuitState.OPEN


def test_change_permission_allows_the_actions_but_not_editing(
    staff_client: Any,  # noqa: F811
    types: dict[str, TaskType],
) -> None:
    operator = staff_client("view_tasktype", "change_tasktype")
    assert action_names(operator.get(TYPES_URL)) == FLOW_ACTIONS
    response = run_action(operator, TYPES_URL, "pause_task_types", [types["flow_plain"]])
    assert messages_of(response) == ["Paused 1 task type."]
    url = reverse("admin:taskqueue_tasktype_change", args=[types["flow_rated"].pk])
    assert operator.post(url, {"rate_limit": "1000/s"}).status_code == 403
    assert TaskType.objects.get(name="flow_rated").rate_limit == "10/s"
