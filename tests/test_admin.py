"""The Task admin and the pages of every model: rendering, escaping, search, task actions.

The dead-letter admin (its actions and error grouping) is tested in test_admin_dead_letters.
Data is made through ``taskqueue.enqueue`` and the store verbs, as a worker would.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.db.models.functions import Now
from django.urls import reverse

import taskqueue
from taskqueue import store
from taskqueue.models import DeadLetter, Task, TaskAttempt, TaskStatus, TaskType, Worker
from taskqueue.worker.presence import register_worker

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
TASKS_URL = reverse("admin:taskqueue_task_changelist")


# --- making data the way workers do -----------------------------------------------------------


def claim_all(queue: str, worker_id: str = "test-worker") -> list[store.ClaimedTask]:
    """Claim every due task of ``queue``."""
    return store.claim_due_tasks(worker_id, [queue], 1000)


def dead_tasks(
    count: int = 1,
    *,
    task_type: str = "always_fails",
    payload: dict[str, Any] | None = None,
    error_type: str = "ValueError",
    error: str = "boom",
    queue: str = "triage",
    **options: Any,
) -> list[Task]:
    """Enqueue tasks on ``queue`` (which must be empty), claim them and dead-letter them."""
    tasks = [taskqueue.enqueue(task_type, payload, queue=queue, **options) for _ in range(count)]
    claimed = claim_all(queue)
    assert {c.id for c in claimed} == {t.id for t in tasks}
    for task in claimed:
        letter = store.dead_letter(
            task,
            worker_id="test-worker",
            error_type=error_type,
            error=error,
            traceback=f"Traceback (most recent call last):\n{error_type}: {error}",
        )
        assert letter is not None
    return [Task.objects.get(pk=task.pk) for task in tasks]


def running_task(queue: str = "busy") -> Task:
    """Enqueue one task on ``queue`` (which must be empty) and claim it."""
    task = taskqueue.enqueue("noop", queue=queue)
    assert [c.id for c in claim_all(queue)] == [task.id]
    return Task.objects.get(pk=task.pk)


def completed_task(queue: str = "done") -> Task:
    task = taskqueue.enqueue("echo", {"value": 1}, queue=queue)
    (claimed,) = claim_all(queue)
    assert store.complete_tasks([(claimed, {"value": 1})]) == {task.id}
    return Task.objects.get(pk=task.pk)


def statuses(tasks: list[Task]) -> list[str]:
    return [Task.objects.get(pk=task.pk).status for task in tasks]


def run_action(client: Any, url: str, action: str, objects: list[Any], **extra: str) -> Any:
    """POST an admin action from the changelist and follow the redirect."""
    data = {"action": action, "_selected_action": [str(obj.pk) for obj in objects], **extra}
    return client.post(url, data, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def action_names(response: Any) -> set[str]:
    """The actions offered on a changelist (the blank choice left out)."""
    form = response.context["action_form"]
    if form is None:
        return set()
    return {name for name, _label in form.fields["action"].choices if name}


@pytest.fixture
def staff_client(client: Any, django_user_model: Any) -> Any:
    """Log in a staff user holding exactly the given taskqueue permissions."""

    def login(*codenames: str) -> Any:
        user = django_user_model.objects.create_user("staff", password=None, is_staff=True)
        perms = Permission.objects.filter(
            content_type__app_label="taskqueue", codename__in=codenames
        )
        assert perms.count() == len(codenames)
        user.user_permissions.add(*perms)
        client.force_login(user)
        return client

    return login


# --- every page renders -----------------------------------------------------------------------


def test_every_changelist_and_change_page_renders_for_a_superuser(admin_client: Any) -> None:
    register_worker("host:1:abc", ["default", "triage"], 4)
    pending = taskqueue.enqueue("add", {"a": 1, "b": 2}, metadata={"order": 42})
    running = running_task()
    done = completed_task()
    (dead,) = dead_tasks(error="went wrong")
    waiting = taskqueue.enqueue("noop", delay=timedelta(hours=1))
    pages = [
        reverse(f"admin:taskqueue_{name}_changelist")
        for name in ("task", "deadletter", "tasktype", "worker")
    ]
    pages += [
        reverse("admin:taskqueue_task_change", args=[task.pk])
        for task in (pending, running, done, dead, waiting)
    ]
    pages += [
        reverse("admin:taskqueue_deadletter_change", args=[DeadLetter.objects.get().pk]),
        reverse("admin:taskqueue_tasktype_change", args=[TaskType.objects.get(name="add").pk]),
        reverse("admin:taskqueue_worker_change", args=["host:1:abc"]),
        reverse("admin:index"),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page

    listing = admin_client.get(TASKS_URL)
    assert listing.context["cl"].result_count == 5
    detail = admin_client.get(reverse("admin:taskqueue_task_change", args=[dead.pk])).content
    text = detail.decode()
    assert "Traceback (most recent call last):\nValueError: went wrong" in text
    assert reverse("admin:taskqueue_deadletter_change", args=[dead.dead_letters.get().pk]) in text
    assert "1/3" in text  # attempts of max
    pending_page = admin_client.get(reverse("admin:taskqueue_task_change", args=[pending.pk]))
    assert "&quot;order&quot;: 42" in pending_page.content.decode()
    assert "high" in pending_page.content.decode()  # the "add" handler's priority label


def test_task_change_page_shows_progress_result_and_worker(admin_client: Any) -> None:
    task = taskqueue.enqueue("noop", queue="busy")
    (claimed,) = claim_all("busy")
    assert store.save_progress(task.id, claimed.lease_id, 0.25, "a quarter")
    text = admin_client.get(reverse("admin:taskqueue_task_change", args=[task.pk])).content
    page = text.decode()
    assert '<progress value="25" max="100" title="a quarter"></progress> 25%' in page
    assert reverse("admin:taskqueue_worker_change", args=["test-worker"]) in page
    listing = admin_client.get(TASKS_URL).content.decode()
    assert "25%" in listing


def test_task_data_is_escaped_on_change_pages_and_changelists(admin_client: Any) -> None:
    (task,) = dead_tasks(
        task_type="echo",
        payload={"value": SCRIPT},
        error_type=SCRIPT,
        error=SCRIPT,
        metadata={SCRIPT: SCRIPT},
        idempotency_key=SCRIPT,
    )
    # The task list shows no payload: a progress message is the task data it shows.
    running = taskqueue.enqueue("echo", {"value": SCRIPT}, queue="busy")
    (claimed,) = claim_all("busy")
    assert store.save_progress(running.id, claimed.lease_id, 0.5, SCRIPT)
    letter = DeadLetter.objects.get()
    pages = [
        TASKS_URL,
        reverse("admin:taskqueue_task_change", args=[running.pk]),
        reverse("admin:taskqueue_deadletter_changelist"),
        reverse("admin:taskqueue_task_change", args=[task.pk]),
        reverse("admin:taskqueue_deadletter_change", args=[letter.pk]),
    ]
    for page in pages:
        content = admin_client.get(page).content.decode()
        assert SCRIPT not in content, page
        assert ESCAPED_SCRIPT in content, page
    detail = admin_client.get(reverse("admin:taskqueue_task_change", args=[task.pk]))
    # The payload as json.dumps(indent=2, sort_keys=True) prints it, escaped.
    assert "{\n  &quot;value&quot;: &quot;&lt;script&gt;" in detail.content.decode()


def test_search_by_full_uuid_finds_the_task(admin_client: Any) -> None:
    tasks = [taskqueue.enqueue("noop") for _ in range(3)]
    for wanted in tasks:
        response = admin_client.get(TASKS_URL, {"q": str(wanted.pk)})
        assert [task.pk for task in response.context["cl"].result_list] == [wanted.pk]


def test_search_by_type_error_and_idempotency_key(admin_client: Any) -> None:
    keyed = taskqueue.enqueue("echo", idempotency_key="welcome-42")
    (failed,) = dead_tasks(error="card declined by bank")
    taskqueue.enqueue("noop")
    for query, expected in [("welcome-42", keyed), ("declined by", failed), ("echo", keyed)]:
        response = admin_client.get(TASKS_URL, {"q": query})
        assert [task.pk for task in response.context["cl"].result_list] == [expected.pk], query


def test_filters_by_status_and_priority(admin_client: Any) -> None:
    high = taskqueue.enqueue("add", {"a": 1, "b": 1})
    low = taskqueue.enqueue("noop", priority="low")
    (dead,) = dead_tasks()
    cases = [({"status__exact": "failed"}, {dead.pk}), ({"priority": "50"}, {high.pk})]
    cases.append(({"priority": "-50"}, {low.pk}))
    for query, expected in cases:
        response = admin_client.get(TASKS_URL, query)
        assert {task.pk for task in response.context["cl"].result_list} == expected, query


# --- no hand edits ----------------------------------------------------------------------------


def test_task_pages_are_read_only_even_for_a_superuser(admin_client: Any) -> None:
    task = taskqueue.enqueue("echo", {"value": "before"})
    url = reverse("admin:taskqueue_task_change", args=[task.pk])
    page = admin_client.get(url)
    assert page.context["has_change_permission"] is False
    assert admin_client.post(url, {"payload": '{"value": "after"}'}).status_code == 403
    task.refresh_from_db()
    assert task.payload == {"value": "before"}
    assert admin_client.get(reverse("admin:taskqueue_task_add")).status_code == 403


def test_task_type_and_worker_pages_are_read_only(admin_client: Any) -> None:
    register_worker("host:2:def", ["default"], 2)
    task_type = TaskType.objects.get(name="noop")
    assert admin_client.get(reverse("admin:taskqueue_tasktype_add")).status_code == 403
    assert admin_client.get(reverse("admin:taskqueue_worker_add")).status_code == 403
    url = reverse("admin:taskqueue_tasktype_change", args=[task_type.pk])
    assert admin_client.post(url, {"paused": "on"}).status_code == 403
    url = reverse("admin:taskqueue_worker_change", args=["host:2:def"])
    assert admin_client.post(url, {"concurrency": "99"}).status_code == 403
    task_type.refresh_from_db()
    assert task_type.paused is False
    assert Worker.objects.get().concurrency == 2
    listing = admin_client.get(reverse("admin:taskqueue_tasktype_changelist"))
    # Pause, resume and reset circuit are the only actions (tests/test_admin_task_types.py).
    assert action_names(listing) == {"pause_task_types", "resume_task_types", "reset_circuits"}


def test_worker_is_alive_only_while_running_with_a_fresh_heartbeat(admin_client: Any) -> None:
    register_worker("host:3:live", ["default"], 1)
    register_worker("host:3:stale", ["default"], 1)
    register_worker("host:3:gone", ["default"], 1)
    # Test setup writes worker rows directly: heartbeats are not task state.
    Worker.objects.filter(id="host:3:stale").update(last_heartbeat=Now() - timedelta(minutes=5))
    Worker.objects.filter(id="host:3:gone").update(status="stopped")
    response = admin_client.get(reverse("admin:taskqueue_worker_changelist"))
    model_admin = response.context["cl"].model_admin
    alive = {worker.id: model_admin.alive(worker) for worker in response.context["cl"].result_list}
    assert alive == {"host:3:live": True, "host:3:stale": False, "host:3:gone": False}


# --- task actions -----------------------------------------------------------------------------


def test_retry_requeues_dead_tasks_and_reports_the_skipped(admin_client: Any) -> None:
    dead = dead_tasks(2)
    pending = taskqueue.enqueue("noop")
    response = run_action(admin_client, TASKS_URL, "retry_tasks", [*dead, pending])
    assert messages_of(response) == [
        "Retried 2 tasks. Skipped 1 task that is not failed (only dead tasks can be retried)."
    ]
    assert statuses(dead) == [TaskStatus.PENDING, TaskStatus.PENDING]
    assert all(Task.objects.get(pk=task.pk).attempts == 0 for task in dead)
    assert DeadLetter.objects.filter(resolved_at__isnull=True).count() == 0


def test_retry_skips_a_dead_task_whose_idempotency_key_is_taken(admin_client: Any) -> None:
    (dead,) = dead_tasks(idempotency_key="invoice-7")
    newer = taskqueue.enqueue("noop", idempotency_key="invoice-7")
    assert newer.pk != dead.pk
    response = run_action(admin_client, TASKS_URL, "retry_tasks", [dead])
    assert messages_of(response) == [
        "Retried 0 tasks. Skipped 1 task whose idempotency key is held by a newer unfinished task."
    ]
    assert statuses([dead]) == [TaskStatus.FAILED]


def test_retry_with_select_across_applies_the_current_filter(admin_client: Any) -> None:
    dead = dead_tasks(3)
    pending = taskqueue.enqueue("noop")
    response = run_action(
        admin_client,
        f"{TASKS_URL}?status__exact=failed",
        "retry_tasks",
        dead[:1],
        select_across="1",
    )
    assert messages_of(response) == ["Retried 3 tasks."]
    assert statuses([*dead, pending]) == [TaskStatus.PENDING] * 4


def test_cancel_cancels_unstarted_tasks_and_asks_running_ones_to_stop(admin_client: Any) -> None:
    pending = taskqueue.enqueue("noop")
    scheduled = taskqueue.enqueue("noop", delay=timedelta(hours=1))
    running = running_task()
    done = completed_task()
    response = run_action(
        admin_client, TASKS_URL, "cancel_tasks", [pending, scheduled, running, done]
    )
    assert messages_of(response) == [
        "Cancelled 2 tasks. Did not cancel 1 running task; it was asked to stop "
        "(handlers see ctx.cancel_requested). Did not cancel 1 task that had already finished."
    ]
    assert statuses([pending, scheduled, running, done]) == [
        TaskStatus.CANCELLED,
        TaskStatus.CANCELLED,
        TaskStatus.RUNNING,
        TaskStatus.COMPLETED,
    ]
    assert Task.objects.get(pk=running.pk).cancel_requested is True


def test_delete_asks_first_then_deletes_through_the_store_keeping_running_tasks(
    admin_client: Any,
) -> None:
    pending = taskqueue.enqueue("noop")
    (dead,) = dead_tasks()
    running = running_task()
    selected = [pending, dead, running]
    confirm = run_action(admin_client, TASKS_URL, "delete_tasks", selected)
    page = confirm.content.decode()
    assert "Delete 3 tasks, with their attempts and dead letters?" in page
    assert "1 of them is running and will be kept." in page
    assert Task.objects.count() == 3  # nothing deleted before the confirmation

    response = run_action(admin_client, TASKS_URL, "delete_tasks", selected, post="yes")
    assert messages_of(response) == [
        "Deleted 2 tasks. Kept 1 running task: a task is deleted only when it is not running."
    ]
    assert list(Task.objects.values_list("pk", flat=True)) == [running.pk]
    assert not DeadLetter.objects.exists()
    assert not TaskAttempt.objects.exists()
    logged = LogEntry.objects.filter(action_flag=DELETION).values_list("object_id", flat=True)
    assert sorted(logged) == sorted([str(pending.pk), str(dead.pk)])


def test_delete_of_all_filtered_tasks_keeps_the_filter_through_the_confirmation(
    admin_client: Any,
) -> None:
    doomed = dead_tasks(3)
    kept = taskqueue.enqueue("noop")
    url = f"{TASKS_URL}?status__exact=failed"
    confirm = run_action(admin_client, url, "delete_tasks", doomed[:1], select_across="1")
    assert "Delete 3 tasks, with their attempts and dead letters?" in confirm.content.decode()
    # The confirmation form posts back what it was given: one page's ids and the flag.
    assert confirm.context["selected_ids"] == [str(doomed[0].pk)]
    assert confirm.context["select_across"] == "1"
    response = run_action(
        admin_client, url, "delete_tasks", doomed[:1], select_across="1", post="yes"
    )
    assert messages_of(response) == ["Deleted 3 tasks."]
    assert list(Task.objects.values_list("pk", flat=True)) == [kept.pk]


def test_django_bulk_delete_is_replaced(admin_client: Any) -> None:
    task = taskqueue.enqueue("noop")
    response = admin_client.get(TASKS_URL)
    assert "delete_selected" not in action_names(response)
    assert {"retry_tasks", "cancel_tasks", "delete_tasks"} <= action_names(response)
    response = run_action(admin_client, TASKS_URL, "delete_selected", [task], post="yes")
    assert Task.objects.filter(pk=task.pk).exists()


def test_single_delete_goes_through_the_store_and_never_removes_a_running_task(
    admin_client: Any,
) -> None:
    (dead,) = dead_tasks()
    running = running_task()
    running_url = reverse("admin:taskqueue_task_delete", args=[running.pk])
    assert admin_client.get(running_url).status_code == 403
    assert admin_client.post(running_url, {"post": "yes"}).status_code == 403
    dead_url = reverse("admin:taskqueue_task_delete", args=[dead.pk])
    # The page lists the dead letter and attempts that go with the task, without asking for
    # permissions on them.
    confirm = admin_client.get(dead_url)
    assert confirm.status_code == 200
    assert not confirm.context["perms_lacking"]
    admin_client.post(dead_url, {"post": "yes"})
    assert list(Task.objects.values_list("pk", flat=True)) == [running.pk]
    assert not DeadLetter.objects.exists()


# --- permissions ------------------------------------------------------------------------------


def test_viewer_sees_tasks_but_can_run_no_action(staff_client: Any) -> None:
    client = staff_client("view_task")
    (dead,) = dead_tasks()
    pending = taskqueue.enqueue("noop")
    response = client.get(TASKS_URL)
    assert response.status_code == 200
    assert action_names(response) == set()
    detail = client.get(reverse("admin:taskqueue_task_change", args=[dead.pk]))
    # The attempts inline follows the task's permissions, not TaskAttempt's own.
    assert "Traceback (most recent call last)" in detail.content.decode()
    for action in ("retry_tasks", "cancel_tasks", "delete_tasks"):
        run_action(client, TASKS_URL, action, [dead, pending], post="yes")
    assert statuses([dead, pending]) == [TaskStatus.FAILED, TaskStatus.PENDING]


def test_change_permission_allows_retry_and_cancel_but_not_delete(staff_client: Any) -> None:
    client = staff_client("view_task", "change_task")
    pending = taskqueue.enqueue("noop")
    response = client.get(TASKS_URL)
    assert action_names(response) == {"retry_tasks", "cancel_tasks"}
    run_action(client, TASKS_URL, "delete_tasks", [pending], post="yes")
    assert Task.objects.filter(pk=pending.pk).exists()
    delete_url = reverse("admin:taskqueue_task_delete", args=[pending.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    response = run_action(client, TASKS_URL, "cancel_tasks", [pending])
    assert messages_of(response) == ["Cancelled 1 task."]


def test_delete_permission_alone_allows_delete_only(staff_client: Any) -> None:
    client = staff_client("view_task", "delete_task")
    (dead,) = dead_tasks()
    response = client.get(TASKS_URL)
    assert action_names(response) == {"delete_tasks"}
    run_action(client, TASKS_URL, "retry_tasks", [dead])
    assert statuses([dead]) == [TaskStatus.FAILED]
    response = run_action(client, TASKS_URL, "delete_tasks", [dead], post="yes")
    assert messages_of(response) == ["Deleted 1 task."]
    assert not Task.objects.exists()
