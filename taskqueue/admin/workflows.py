"""The Workflow admin: a chain/group run shown as one unit, with its tasks in dependency order.

Read-only, apart from the "cancel workflow" action, which needs the permission to change
tasks (it cancels tasks through ``taskqueue.store``). Also the task list's workflow filter
and the task page's workflow link.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from django.contrib import admin
from django.db.models import Count, Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskqueue import store
from taskqueue.admin import display
from taskqueue.admin.actions import batches, report
from taskqueue.admin.base import QueueModelAdmin
from taskqueue.models import (
    READY_STATES,
    UNFINISHED_STATES,
    Task,
    TaskDependency,
    TaskStatus,
    Workflow,
)

CHANGE_FORM_TEMPLATE = "admin/taskqueue/workflow/change_form.html"
# A workflow page lists every task; past this many, it links to the task list instead.
MAX_TASKS_SHOWN = 500


def _count(status: Any) -> Count:
    states = status if isinstance(status, tuple | list) else (status,)
    return Count("tasks", filter=Q(tasks__status__in=states))


def annotate_progress(queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
    """Add per-state task counts (one grouped query for the whole page)."""
    return queryset.annotate(
        task_total=Count("tasks"),
        task_completed=_count(TaskStatus.COMPLETED),
        task_failed=_count(TaskStatus.FAILED),
        task_cancelled=_count(TaskStatus.CANCELLED),
        task_running=_count((TaskStatus.RUNNING, TaskStatus.RETRYING)),
    )


def workflow_state(workflow: Workflow) -> str:
    """Overall state: completed, failed, cancelled, running, waiting (or empty)."""
    total = getattr(workflow, "task_total", 0)
    if not total:
        return "empty"
    if workflow.task_completed == total:  # type: ignore[attr-defined]
        return "completed"
    if workflow.task_failed:  # type: ignore[attr-defined]
        return "failed"  # a dead task: the workflow can no longer complete
    if workflow.task_cancelled:  # type: ignore[attr-defined]
        return "cancelled"
    if workflow.task_running or workflow.task_completed:  # type: ignore[attr-defined]
        return "running"
    return "waiting"  # nothing has started yet


STATE_LABELS = {
    "empty": _("Empty (its tasks were deleted)"),
    "completed": _("Completed"),
    "failed": _("Failed"),
    "cancelled": _("Cancelled"),
    "running": _("Running"),
    "waiting": _("Waiting"),
}
STATE_COLOURS = {
    "empty": "#5f5f5f",
    "completed": display.STATUS_COLOURS[TaskStatus.COMPLETED],
    "failed": display.STATUS_COLOURS[TaskStatus.FAILED],
    "cancelled": display.STATUS_COLOURS[TaskStatus.CANCELLED],
    "running": display.STATUS_COLOURS[TaskStatus.RUNNING],
    "waiting": display.STATUS_COLOURS[TaskStatus.WAITING],
}


@admin.action(description=_("Cancel selected workflows"), permissions=["cancel"])
def cancel_workflows(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Workflow]
) -> None:
    """Cancel every unfinished task of the selected workflows; ask running ones to stop."""
    tasks = Task.objects.using(queryset.db).filter(workflow__in=queryset.values("pk"))
    # Upstream tasks first: their cancellation cascades to the tasks waiting on them.
    unfinished = list(
        tasks.filter(status__in=UNFINISHED_STATES)
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    before = tasks.filter(status=TaskStatus.CANCELLED).count()
    for batch in batches(unfinished):
        store.cancel_tasks(batch)
    cancelled = tasks.filter(status=TaskStatus.CANCELLED).count() - before
    running = tasks.filter(pk__in=unfinished, status=TaskStatus.RUNNING).count()
    for workflow in queryset:
        modeladmin.log_change(request, workflow, "Cancelled.")
    parts = [
        ngettext("Cancelled %(count)d task.", "Cancelled %(count)d tasks.", cancelled)
        % {"count": cancelled}
    ]
    if running:
        parts.append(
            ngettext(
                "Asked %(count)d running task to stop (handlers see ctx.cancel_requested).",
                "Asked %(count)d running tasks to stop (handlers see ctx.cancel_requested).",
                running,
            )
            % {"count": running}
        )
    report(modeladmin, request, parts)


@admin.register(Workflow)
class WorkflowAdmin(QueueModelAdmin):
    list_display = ("title", "created_at", "created_by", "progress", "state_badge")
    search_fields = ("name",)
    search_help_text = _("Search by workflow name.")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    actions = (cancel_workflows,)
    fields = ("id", "name", "created_at", "created_by", "progress", "state_badge", "tasks_link")
    readonly_fields = fields
    change_form_template = CHANGE_FORM_TEMPLATE

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        return annotate_progress(super().get_queryset(request).select_related("created_by"))

    # --- permissions: read-only; cancelling is changing tasks --------------------------------

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        opts = Task._meta
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    # --- columns -----------------------------------------------------------------------------

    @admin.display(description=_("workflow"), ordering="name")
    def title(self, workflow: Workflow) -> str:
        return str(workflow)

    @admin.display(description=_("progress"))
    def progress(self, workflow: Workflow) -> str:
        return _("%(done)d/%(total)d completed") % {
            "done": workflow.task_completed,  # type: ignore[attr-defined]
            "total": workflow.task_total,  # type: ignore[attr-defined]
        }

    @admin.display(description=_("state"))
    def state_badge(self, workflow: Workflow) -> SafeString:
        state = workflow_state(workflow)
        return format_html(
            '<span class="taskqueue-workflow-state taskqueue-workflow-state-{}" style="background: '
            "{}; color: #fff; padding: 1px 6px; border-radius: 8px; font-size: 0.85em; "
            'white-space: nowrap;">{}</span>',
            state,
            STATE_COLOURS[state],
            STATE_LABELS[state],
        )

    @admin.display(description=_("tasks"))
    def tasks_link(self, workflow: Workflow) -> SafeString:
        return display.changelist_link(
            "task", {"workflow": str(workflow.pk)}, _("Show in the task list")
        )

    # --- the detail page ---------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra = dict(extra_context or {})
        try:
            workflow_id = uuid.UUID(str(object_id))
        except ValueError:
            workflow_id = None
        if workflow_id is not None:
            extra["workflow_tasks"], extra["workflow_tasks_truncated"] = task_rows(workflow_id)
        return super().change_view(request, object_id, form_url, extra)


def task_rows(workflow_id: uuid.UUID) -> tuple[list[dict[str, Any]], bool]:
    """The workflow's tasks in dependency order (creation order), each with what it waits on."""
    using = store.database_alias()
    tasks = list(
        Task.objects.using(using)
        .filter(workflow_id=workflow_id)
        .order_by("created_at", "id")
        .only(
            "id",
            "task_type",
            "status",
            "created_at",
            "started_at",
            "completed_at",
            "last_error",
            "attempts",
            "max_attempts",
        )[: MAX_TASKS_SHOWN + 1]
    )
    truncated = len(tasks) > MAX_TASKS_SHOWN
    tasks = tasks[:MAX_TASKS_SHOWN]
    numbers = {task.id: number for number, task in enumerate(tasks, start=1)}
    waits_on: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for task_id, upstream_id in (
        TaskDependency.objects.using(using)
        .filter(task_id__in=list(numbers))
        .order_by("task_id", "position", "id")
        .values_list("task_id", "depends_on_id")
    ):
        waits_on[task_id].append(upstream_id)
    rows = []
    for task in tasks:
        rows.append(
            {
                "number": numbers[task.id],
                "task": task,
                "url": reverse("admin:taskqueue_task_change", args=[task.pk]),
                "status": display.status_badge(task.status),
                "waits_on": [
                    {
                        "label": f"#{numbers[u]}" if u in numbers else str(u),
                        "url": reverse("admin:taskqueue_task_change", args=[u]),
                    }
                    for u in waits_on[task.id]
                ],
                "error": display.truncated(task.last_error, 120) if task.last_error else "",
                "ready": task.status in READY_STATES,
            }
        )
    return rows, truncated


# --- on the task pages ---------------------------------------------------------------------


class WorkflowFilter(admin.SimpleListFilter):
    """Tasks in a workflow or not; ``?workflow=<id>`` (linked from a workflow) for one."""

    title = _("workflow")
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("In a workflow")), ("no", _("Not in a workflow"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        if value is None:
            return queryset
        if value == "yes":
            return queryset.filter(workflow__isnull=False)
        if value == "no":
            return queryset.filter(workflow__isnull=True)
        try:
            return queryset.filter(workflow_id=uuid.UUID(value))
        except ValueError:
            return queryset.none()


def workflow_link(task: Task) -> SafeString | str:
    """Link to the task's workflow, or "-"."""
    if task.workflow_id is None:
        return "-"
    workflow = Workflow.objects.using(store.database_alias()).filter(pk=task.workflow_id).first()
    return display.admin_link("workflow", task.workflow_id, workflow or task.workflow_id)


def upstream_tasks(task: Task) -> list[Task]:
    """The tasks ``task`` waits on, in the order given (the order its handler reads them)."""
    using = store.database_alias()
    ids = list(
        TaskDependency.objects.using(using)
        .filter(task_id=task.pk)
        .order_by("position", "id")
        .values_list("depends_on_id", flat=True)
    )
    found = Task.objects.using(using).in_bulk(ids)
    return [found[i] for i in ids if i in found]
