"""The DeadLetter admin: detail, triage note, error grouping, actions and their permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

import taskqueue
from taskqueue import store
from taskqueue.models import DeadLetter, Task, TaskStatus
from tests.test_admin import (
    action_names,
    claim_all,
    dead_tasks,
    messages_of,
    run_action,
    staff_client,  # noqa: F401 - a fixture
    statuses,
)

pytestmark = pytest.mark.django_db

LETTERS_URL = reverse("admin:taskqueue_deadletter_changelist")


def letters_of(tasks: list[Task]) -> list[DeadLetter]:
    return list(DeadLetter.objects.filter(task__in=tasks).order_by("task__created_at"))


def test_change_page_shows_error_history_and_payload(admin_client: Any) -> None:
    task = taskqueue.enqueue("always_fails", {"message": "first"}, queue="triage")
    (claimed,) = claim_all("triage")
    assert store.retry_later(
        claimed,
        worker_id="w1",
        delay=0,
        error_type="ValueError",
        error="first failure",
        traceback="Traceback 1",
    )
    (claimed,) = claim_all("triage", worker_id="w2")
    letter = store.dead_letter(
        claimed,
        worker_id="w2",
        error_type="KeyError",
        error="second failure",
        traceback="Traceback 2",
    )
    assert letter is not None
    response = admin_client.get(reverse("admin:taskqueue_deadletter_change", args=[letter.pk]))
    page = response.content.decode()
    for text in ("first failure", "second failure", "Traceback 1", "Traceback 2", "w1", "w2"):
        assert text in page, text
    assert "&quot;message&quot;: &quot;first&quot;" in page  # the task's payload
    assert reverse("admin:taskqueue_task_change", args=[task.pk]) in page
    # The note is the only field of the form.
    assert list(response.context["adminform"].form.fields) == ["note"]


def test_note_is_saved_without_rolling_back_a_concurrent_retry(admin_client: Any) -> None:
    (task,) = dead_tasks()
    letter = DeadLetter.objects.get()
    url = reverse("admin:taskqueue_deadletter_change", args=[letter.pk])
    assert admin_client.get(url).status_code == 200
    # Someone retries the task while this page is open.
    assert store.requeue_dead([task.pk]).requeued == 1
    response = admin_client.post(url, {"note": "upstream API was down", "_save": "Save"})
    assert response.status_code == 302
    letter.refresh_from_db()
    assert letter.note == "upstream API was down"
    assert letter.resolved_at is not None


def test_error_groups_count_unresolved_letters_by_type_and_error(admin_client: Any) -> None:
    value_errors = dead_tasks(3, error_type="ValueError", queue="q1")
    dead_tasks(1, error_type="KeyError", queue="q2")
    permanent = dead_tasks(2, task_type="permanent", error_type="PermanentError", queue="q3")
    assert store.requeue_dead([permanent[0].pk]).requeued == 1  # resolved: not counted
    assert store.mark_reviewed([letters_of(value_errors)[0].pk], None) == 1

    response = admin_client.get(LETTERS_URL)
    groups = [
        (g["task_type"], g["error_type"], g["count"], g["unreviewed"])
        for g in response.context["error_groups"]
    ]
    assert groups == [
        ("always_fails", "ValueError", 3, 2),
        ("always_fails", "KeyError", 1, 1),
        ("permanent", "PermanentError", 1, 1),
    ]
    assert 'id="taskqueue-error-groups"' in response.content.decode()
    for group in response.context["error_groups"]:
        filtered = admin_client.get(group["url"])
        listed = filtered.context["cl"].result_list
        assert len(listed) == group["count"]
        assert {(letter.task_type, letter.error_type) for letter in listed} == {
            (group["task_type"], group["error_type"])
        }


def test_search_by_task_id_and_filters(admin_client: Any) -> None:
    tasks = dead_tasks(2)
    store.requeue_dead([tasks[1].pk])
    response = admin_client.get(LETTERS_URL, {"q": str(tasks[0].pk)})
    assert [letter.task_id for letter in response.context["cl"].result_list] == [tasks[0].pk]
    response = admin_client.get(LETTERS_URL, {"resolved": "yes"})
    assert [letter.task_id for letter in response.context["cl"].result_list] == [tasks[1].pk]
    response = admin_client.get(LETTERS_URL, {"resolved": "no", "reviewed__exact": "0"})
    assert [letter.task_id for letter in response.context["cl"].result_list] == [tasks[0].pk]


# --- actions ----------------------------------------------------------------------------------


def test_retry_requeues_the_dead_tasks(admin_client: Any) -> None:
    tasks = dead_tasks(3)
    store.requeue_dead([tasks[2].pk])  # already retried once: its letter is history
    response = run_action(admin_client, LETTERS_URL, "retry_dead_letters", letters_of(tasks))
    assert messages_of(response) == [
        "Retried 2 tasks. Skipped 1 task that is not failed (only dead tasks can be retried)."
    ]
    assert statuses(tasks) == [TaskStatus.PENDING] * 3
    assert not DeadLetter.objects.filter(resolved_at__isnull=True).exists()


def test_delete_removes_tasks_and_letters_after_confirmation(admin_client: Any) -> None:
    doomed = dead_tasks(2, queue="q1")
    (revived,) = dead_tasks(1, queue="q2")
    store.requeue_dead([revived.pk])
    assert [c.id for c in claim_all("q2")] == [revived.pk]  # running again: must stay
    selected = letters_of([*doomed, revived])
    confirm = run_action(admin_client, LETTERS_URL, "delete_dead_letters", selected)
    page = confirm.content.decode()
    assert "You selected 3 dead letters." in page
    assert "Deleting deletes their 3 tasks" in page
    assert "1 of them is running and will be kept." in page
    assert DeadLetter.objects.count() == 3

    response = run_action(admin_client, LETTERS_URL, "delete_dead_letters", selected, post="yes")
    assert messages_of(response) == [
        "Deleted 2 tasks. Kept 1 running task: a task is deleted only when it is not running."
    ]
    assert list(Task.objects.values_list("pk", flat=True)) == [revived.pk]
    assert [letter.task_id for letter in DeadLetter.objects.all()] == [revived.pk]


def test_mark_reviewed_records_the_user(admin_client: Any, admin_user: Any) -> None:
    letters = letters_of(dead_tasks(2))
    store.mark_reviewed([letters[0].pk], None)
    response = run_action(admin_client, LETTERS_URL, "mark_reviewed", letters)
    assert messages_of(response) == ["Marked 1 dead letter reviewed. 1 was already reviewed."]
    letters[1].refresh_from_db()
    assert letters[1].reviewed is True
    assert letters[1].reviewed_by == admin_user
    assert letters[1].reviewed_at is not None


def test_a_single_dead_letter_cannot_be_deleted_apart_from_its_task(admin_client: Any) -> None:
    dead_tasks()
    letter = DeadLetter.objects.get()
    url = reverse("admin:taskqueue_deadletter_delete", args=[letter.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert DeadLetter.objects.exists()
    assert "delete_selected" not in action_names(admin_client.get(LETTERS_URL))


# --- permissions ------------------------------------------------------------------------------


def test_viewer_can_run_no_dead_letter_action(staff_client: Any) -> None:  # noqa: F811
    client = staff_client("view_deadletter")
    tasks = dead_tasks(2)
    response = client.get(LETTERS_URL)
    assert response.status_code == 200
    assert action_names(response) == set()
    for action in ("retry_dead_letters", "delete_dead_letters", "mark_reviewed"):
        run_action(client, LETTERS_URL, action, letters_of(tasks), post="yes")
    assert statuses(tasks) == [TaskStatus.FAILED] * 2
    assert not DeadLetter.objects.filter(reviewed=True).exists()
    url = reverse("admin:taskqueue_deadletter_change", args=[letters_of(tasks)[0].pk])
    assert client.post(url, {"note": "mine"}).status_code == 403


def test_change_permission_allows_retry_and_review_but_not_delete(
    staff_client: Any,  # noqa: F811
) -> None:
    client = staff_client("view_deadletter", "change_deadletter")
    tasks = dead_tasks(2)
    response = client.get(LETTERS_URL)
    assert action_names(response) == {"retry_dead_letters", "mark_reviewed"}
    run_action(client, LETTERS_URL, "delete_dead_letters", letters_of(tasks), post="yes")
    assert Task.objects.count() == 2
    response = run_action(client, LETTERS_URL, "mark_reviewed", letters_of(tasks)[:1])
    assert messages_of(response) == ["Marked 1 dead letter reviewed."]
    response = run_action(client, LETTERS_URL, "retry_dead_letters", letters_of(tasks))
    assert messages_of(response) == ["Retried 2 tasks."]


def test_delete_permission_allows_delete_only(staff_client: Any) -> None:  # noqa: F811
    client = staff_client("view_deadletter", "delete_deadletter")
    tasks = dead_tasks(1)
    response = client.get(LETTERS_URL)
    assert action_names(response) == {"delete_dead_letters"}
    run_action(client, LETTERS_URL, "mark_reviewed", letters_of(tasks))
    assert not DeadLetter.objects.filter(reviewed=True).exists()
    response = run_action(client, LETTERS_URL, "delete_dead_letters", letters_of(tasks), post="yes")
    assert messages_of(response) == ["Deleted 1 task."]
    assert not Task.objects.exists()
    assert not DeadLetter.objects.exists()
