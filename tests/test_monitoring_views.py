"""Stats and health views: who may read them (anonymous, non-staff, staff, tokens), status
codes, the public health verdict, bad requests."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import TaskFactory, UserFactory, past
from tests.test_stats import live_worker

pytestmark = pytest.mark.django_db

TOKEN = "monitoring-token-0123456789abcdef"
URLS = ("taskqueue:stats", "taskqueue:health")


@pytest.fixture(autouse=True)
def tokens(settings: Any) -> None:
    settings.TASKQUEUE = {
        **settings.TASKQUEUE,
        "MONITORING_TOKENS": ["another-token-for-ci-0000", TOKEN],
    }


def staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True))
    return client


@pytest.mark.parametrize("name", URLS)
def test_anonymous_gets_401_with_a_bearer_challenge(name: str, client: Client) -> None:
    response = client.get(reverse(name))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "authentication_required"


@pytest.mark.parametrize("name", URLS)
def test_non_staff_gets_403(name: str, client: Client) -> None:
    client.force_login(UserFactory(is_staff=False))
    response = client.get(reverse(name))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize("name", URLS)
def test_staff_and_valid_tokens_get_in(name: str) -> None:
    assert staff_client().get(reverse(name)).status_code == 200
    response = Client().get(reverse(name), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    response = Client().get(reverse(name), HTTP_AUTHORIZATION="bearer another-token-for-ci-0000")
    assert response.status_code == 200


@pytest.mark.parametrize("name", URLS)
@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", "Bearer"]
)
def test_invalid_tokens_get_401_even_for_staff(name: str, header: str) -> None:
    response = staff_client().get(reverse(name), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert TOKEN not in response.content.decode()


def test_no_configured_tokens_accept_no_token(settings: Any) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "MONITORING_TOKENS": []}
    response = Client().get(reverse("taskqueue:stats"), HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 401


def test_stats_view_returns_the_stats() -> None:
    TaskFactory.create_batch(3, run_at=past(20))
    live_worker()
    response = staff_client().get(reverse("taskqueue:stats"), {"window": "600"})
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    data = response.json()
    assert data["window"] == 600
    assert data["counts"]["pending"] == 3 and data["counts"]["total"] == 3
    for key in (
        "generated_at",
        "by_queue",
        "by_type",
        "oldest_pending_age",
        "throughput",
        "window_outcomes",
        "dead_letters",
        "workers",
        "open_circuits",
        "late_schedules",
        "approximate",
    ):
        assert key in data, key


def test_stats_view_rejects_a_bad_window_and_other_methods() -> None:
    client = staff_client()
    response = client.get(reverse("taskqueue:stats"), {"window": "forever"})
    assert response.status_code == 400
    assert "window must be a whole number" in response.json()["detail"]
    assert client.post(reverse("taskqueue:stats")).status_code == 405


def test_health_view_answers_503_when_unhealthy() -> None:
    client = staff_client()
    response = client.get(reverse("taskqueue:health"))
    assert response.status_code == 200
    assert response.json()["status"] == "healthy" and response.json()["issues"] == []
    TaskFactory(task_type="orphan", run_at=past(5))
    response = client.get(reverse("taskqueue:health"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert [issue["code"] for issue in body["issues"]] == ["no_worker"]
    assert "checked_at" in body


def test_public_health_gives_anyone_the_verdict_without_details(settings: Any) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "HEALTH": {"PUBLIC": True}}
    TaskFactory(task_type="orphan", run_at=past(5))
    response = Client().get(reverse("taskqueue:health"))
    assert response.status_code == 503
    assert set(response.json()) == {"status", "checked_at"}
    # Staff and tokens still see the issues; a wrong token is still refused.
    response = Client().get(reverse("taskqueue:health"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.json()["issues"][0]["task_type"] == "orphan"
    response = Client().get(reverse("taskqueue:health"), HTTP_AUTHORIZATION="Bearer wrong")
    assert response.status_code == 401
    # The stats stay private.
    assert Client().get(reverse("taskqueue:stats")).status_code == 401


def test_inactive_staff_is_refused(client: Client) -> None:
    user = UserFactory(is_staff=True, is_active=True)
    client.force_login(user)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert client.get(reverse("taskqueue:stats")).status_code in (401, 403)
