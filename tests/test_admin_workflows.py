"""The Workflow admin (list, detail, cancel action) and the workflow parts of the task pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

import taskqueue
from taskqueue import store
from taskqueue.models import Task, TaskStatus, Workflow
from tests.factories import claim, kill

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
WORKFLOWS_URL = reverse("admin:taskqueue_workflow_changelist")
TASKS_URL = reverse("admin:taskqueue_task_changelist")


def order_workflow(name: str = "order 1", queue: str = "default") -> Any:
    """validate -> group(email, invoice) -> ship."""
    return taskqueue.chain(
        taskqueue.step("wf_step", {"label": "validate"}, queue=queue),
        taskqueue.group(
            taskqueue.step("wf_step", {"label": "email"}, queue=queue),
            taskqueue.step("wf_step", {"label": "invoice"}, queue=queue),
        ),
        taskqueue.step("wf_step", {"label": "ship"}, queue=queue),
        name=name,
    ).enqueue()


def complete(task: Task) -> None:
    assert store.complete_tasks([(claim(task), {"label": task.payload["label"]})]) == {task.id}


def workflow_url(workflow: Workflow) -> str:
    return reverse("admin:taskqueue_workflow_change", args=[workflow.pk])


def action_names(response: Any) -> set[str]:
    form = response.context["action_form"]
    if form is None:
        return set()
    return {name for name, _label in form.fields["action"].choices if name}


@pytest.fixture
def staff_client(client: Any, django_user_model: Any) -> Any:
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


def test_list_shows_progress_and_overall_state(admin_client: Any) -> None:
    running = order_workflow("running one", queue="q1")
    complete(running.tasks[0])
    done = order_workflow("done one", queue="q2")
    for task in done.tasks[:1]:
        complete(task)
    email, invoice = done.tasks[1:3]
    claimed = {c.id: c for c in store.claim_due_tasks("w", ["q2"], 10)}
    assert store.complete_tasks([(claimed[t.id], {}) for t in (email, invoice)])
    complete(done.tasks[3])
    failed = order_workflow("failed one", queue="q3")
    kill(failed.tasks[0])
    untouched = order_workflow("not started", queue="q4")
    cancelled = order_workflow("withdrawn", queue="q5")
    taskqueue.cancel(cancelled.tasks[0])

    page = admin_client.get(WORKFLOWS_URL)
    assert page.status_code == 200
    rows = {
        workflow.name: workflow
        for workflow in page.context["cl"].result_list  # annotated by the admin
    }
    text = page.content.decode()
    assert "1/4 completed" in text and "4/4 completed" in text and "0/4 completed" in text
    from taskqueue.admin.workflows import workflow_state

    assert {name: workflow_state(w) for name, w in rows.items()} == {
        "running one": "running",
        "done one": "completed",
        "failed one": "failed",
        "not started": "waiting",
        "withdrawn": "cancelled",
    }
    for label in ("Running", "Completed", "Failed", "Waiting", "Cancelled"):
        assert f">{label}</span>" in text
    assert untouched.workflow.name in text


def test_detail_lists_tasks_in_dependency_order_with_what_each_waits_on(
    admin_client: Any,
) -> None:
    run = order_workflow()
    complete(run.tasks[0])
    page = admin_client.get(workflow_url(run.workflow))
    assert page.status_code == 200
    rows = page.context["workflow_tasks"]
    assert [row["task"].id for row in rows] == [t.id for t in run.tasks]
    assert [[w["label"] for w in row["waits_on"]] for row in rows] == [
        [],
        ["#1"],
        ["#1"],
        ["#2", "#3"],
    ]
    text = page.content.decode()
    for task in run.tasks:
        assert reverse("admin:taskqueue_task_change", args=[task.pk]) in text
    assert "1/4 completed" in text
    assert f"{TASKS_URL}?workflow={run.workflow.pk}" in text
    # The task list filtered to this workflow holds exactly its tasks.
    listing = admin_client.get(TASKS_URL, {"workflow": str(run.workflow.pk)})
    assert {t.pk for t in listing.context["cl"].result_list} == {t.pk for t in run.tasks}
    outside = taskqueue.enqueue("noop")
    solo = admin_client.get(TASKS_URL, {"workflow": "no"})
    assert [t.pk for t in solo.context["cl"].result_list] == [outside.pk]
    assert admin_client.get(TASKS_URL, {"workflow": "not-a-uuid"}).status_code == 200


def test_task_page_links_its_workflow_and_its_upstream_and_downstream_tasks(
    admin_client: Any,
) -> None:
    run = order_workflow()
    validate, email, invoice, ship = run.tasks
    text = admin_client.get(reverse("admin:taskqueue_task_change", args=[ship.pk])).content
    page = text.decode()
    assert workflow_url(run.workflow) in page
    email_url = reverse("admin:taskqueue_task_change", args=[email.pk])
    invoice_url = reverse("admin:taskqueue_task_change", args=[invoice.pk])
    assert page.index(email_url) < page.index(invoice_url)  # in the order given
    upstream_page = admin_client.get(reverse("admin:taskqueue_task_change", args=[validate.pk]))
    content = upstream_page.content.decode()
    assert email_url in content and invoice_url in content  # its dependents


def test_workflow_and_task_data_are_escaped(admin_client: Any) -> None:
    run = taskqueue.chain(
        taskqueue.step("wf_fails", {"message": SCRIPT}, queue="evil"),
        taskqueue.step("wf_step", {"label": SCRIPT}),
        name=SCRIPT,
    ).enqueue()
    kill(run.tasks[0], errors=(SCRIPT,))
    assert Task.objects.get(pk=run.tasks[1].pk).status == TaskStatus.CANCELLED
    pages = [
        WORKFLOWS_URL,
        workflow_url(run.workflow),
        reverse("admin:taskqueue_task_change", args=[run.tasks[1].pk]),
    ]
    for url in pages:
        content = admin_client.get(url).content.decode()
        assert SCRIPT not in content, url
        assert ESCAPED_SCRIPT in content, url


def test_viewing_needs_the_workflow_view_permission(staff_client: Any) -> None:
    run = order_workflow()
    client = staff_client("view_task")
    assert client.get(WORKFLOWS_URL).status_code == 403
    assert client.get(workflow_url(run.workflow)).status_code == 403


def test_cancel_workflow_needs_the_task_change_permission(staff_client: Any) -> None:
    run = order_workflow()
    client = staff_client("view_workflow")
    page = client.get(WORKFLOWS_URL)
    assert page.status_code == 200
    assert "cancel_workflows" not in action_names(page)
    client.post(
        WORKFLOWS_URL,
        {"action": "cancel_workflows", "_selected_action": [str(run.workflow.pk)]},
        follow=True,
    )
    assert {t.status for t in Task.objects.all()} == {TaskStatus.PENDING, TaskStatus.WAITING}
    # No change form either: the workflow is read-only.
    assert "Save" not in client.get(workflow_url(run.workflow)).content.decode()


def test_cancel_workflow_cancels_every_unfinished_task_and_asks_running_ones_to_stop(
    staff_client: Any,
) -> None:
    run = order_workflow(queue="shop")
    other = order_workflow("other", queue="elsewhere")
    validate, email, invoice, ship = run.tasks
    complete(validate)
    (running,) = store.claim_due_tasks("w", ["shop"], 1)
    client = staff_client("view_workflow", "change_task")
    page = client.get(WORKFLOWS_URL)
    assert "cancel_workflows" in action_names(page)
    response = client.post(
        WORKFLOWS_URL,
        {"action": "cancel_workflows", "_selected_action": [str(run.workflow.pk)]},
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    assert messages == [
        "Cancelled 2 tasks. Asked 1 running task to stop (handlers see ctx.cancel_requested)."
    ]
    statuses = {t.id: t for t in Task.objects.filter(workflow=run.workflow)}
    assert statuses[validate.id].status == TaskStatus.COMPLETED
    assert statuses[running.id].status == TaskStatus.RUNNING
    assert statuses[running.id].cancel_requested
    assert statuses[ship.id].status == TaskStatus.CANCELLED
    (left,) = {email.id, invoice.id} - {running.id}
    assert statuses[left].status == TaskStatus.CANCELLED
    assert {t.status for t in Task.objects.filter(workflow=other.workflow)} == {
        TaskStatus.PENDING,
        TaskStatus.WAITING,
    }
