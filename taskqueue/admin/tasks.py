"""The Task admin: a read-only view of every task, with retry, cancel and delete actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from taskqueue import store
from taskqueue.admin import actions, display
from taskqueue.admin.base import StoreDeletesModelAdmin
from taskqueue.admin.workflows import WorkflowFilter, upstream_tasks, workflow_link
from taskqueue.core.priorities import PRIORITIES
from taskqueue.models import Task, TaskAttempt, TaskStatus


class PriorityFilter(admin.SimpleListFilter):
    """Filter by the named priorities (an integer in the URL works too)."""

    title = _("priority")
    parameter_name = "priority"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), name) for name, value in PRIORITIES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        if value is None:
            return queryset
        try:
            return queryset.filter(priority=int(value))
        except ValueError:
            return queryset.none()


class TaskAttemptInline(admin.StackedInline):
    """The failed attempts of a task, read-only; stacked, so tracebacks get the width."""

    model = TaskAttempt
    extra = 0
    can_delete = False
    show_change_link = False
    fields = (
        "number",
        "outcome",
        "worker_id",
        "started_at",
        "finished_at",
        "error_type",
        "error_text",
        "traceback_text",
    )
    readonly_fields = fields
    ordering = ("number", "id")
    verbose_name_plural = _("failed attempts")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskAttempt]:
        return super().get_queryset(request).using(store.database_alias())

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Attempts are part of the task: whoever may see the task sees them.
        opts = Task._meta
        return request.user.has_perm(f"{opts.app_label}.view_{opts.model_name}") or (
            request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("error"))
    def error_text(self, attempt: TaskAttempt) -> SafeString | str:
        return display.text_block(attempt.error) if attempt.error else "-"

    @admin.display(description=_("traceback"))
    def traceback_text(self, attempt: TaskAttempt) -> SafeString | str:
        return display.text_block(attempt.traceback) if attempt.traceback else "-"


@admin.register(Task)
class TaskAdmin(StoreDeletesModelAdmin):
    list_display = (
        "id",
        "task_type",
        "queue",
        "status_badge",
        "priority_name",
        "attempts_of_max",
        "run_at",
        "created_at",
        "progress_summary",
    )
    list_filter = (
        "status",
        "task_type",
        "queue",
        PriorityFilter,
        WorkflowFilter,
        "created_at",
        "run_at",
    )
    date_hierarchy = "created_at"
    search_fields = ("id", "task_type", "last_error", "idempotency_key")
    search_help_text = _("Search by task id, type, last error or idempotency key.")
    ordering = ("-created_at",)
    actions = (actions.retry_tasks, actions.cancel_tasks, actions.delete_tasks)
    inlines = (TaskAttemptInline,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "task_type",
                    "queue",
                    "status_badge",
                    "priority_name",
                    "attempts_of_max",
                    "idempotency_key",
                    "created_by",
                    "workflow_link",
                    "claimed_by_link",
                    "cancel_requested",
                )
            },
        ),
        (_("Progress"), {"fields": ("progress_bar", "progress_message")}),
        (_("Data"), {"fields": ("payload_json", "result_json", "metadata_json")}),
        (_("Failure"), {"fields": ("last_error_text", "dead_letter_links")}),
        (_("Dependencies"), {"fields": ("depends_on_links", "dependent_links")}),
        (
            _("Timing"),
            {
                "fields": (
                    "created_at",
                    "updated_at",
                    "run_at",
                    "started_at",
                    "completed_at",
                    "timeout",
                    "retry_json",
                )
            },
        ),
    )
    readonly_fields = tuple(field for _name, options in fieldsets for field in options["fields"])

    # --- permissions: tasks change only through the actions (store verbs) -------------------

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        # Model-level change permission gates retry and cancel; no task is edited by hand.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        if obj is not None and obj.status == TaskStatus.RUNNING:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        store.delete_tasks([obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        store.delete_tasks(list(queryset.values_list("pk", flat=True)))

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        to_delete, model_count, _perms_needed, protected = super().get_deleted_objects(
            objs, request
        )
        # The store deletes a task's attempts and dead letters with it: permission to delete
        # the task is what counts, not permission on those rows.
        return to_delete, model_count, set(), protected

    # --- columns and fields ------------------------------------------------------------------

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, task: Task) -> SafeString:
        return display.status_badge(task.status)

    @admin.display(description=_("priority"), ordering="priority")
    def priority_name(self, task: Task) -> str:
        return task.priority_label

    @admin.display(description=_("attempts"), ordering="attempts")
    def attempts_of_max(self, task: Task) -> str:
        return f"{task.attempts}/{task.max_attempts}"

    @admin.display(description=_("progress"), ordering="progress")
    def progress_bar(self, task: Task) -> SafeString | str:
        return display.progress_bar(task.progress, task.progress_message)

    @admin.display(description=_("progress"), ordering="progress")
    def progress_summary(self, task: Task) -> SafeString | str:
        return display.progress_summary(task.progress, task.progress_message)

    @admin.display(description=_("payload"))
    def payload_json(self, task: Task) -> SafeString:
        return display.json_block(task.payload)

    @admin.display(description=_("result"))
    def result_json(self, task: Task) -> SafeString | str:
        return "-" if task.result is None else display.json_block(task.result)

    @admin.display(description=_("metadata"))
    def metadata_json(self, task: Task) -> SafeString:
        return display.json_block(task.metadata)

    @admin.display(description=_("retry strategy"))
    def retry_json(self, task: Task) -> SafeString:
        return display.json_block(task.retry)

    @admin.display(description=_("last error"))
    def last_error_text(self, task: Task) -> SafeString | str:
        return display.text_block(task.last_error) if task.last_error else "-"

    @admin.display(description=_("claimed by worker"))
    def claimed_by_link(self, task: Task) -> SafeString | str:
        if not task.claimed_by:
            return "-"
        return display.admin_link("worker", task.claimed_by, task.claimed_by)

    @admin.display(description=_("dead letters"))
    def dead_letter_links(self, task: Task) -> SafeString | str:
        letters = task.dead_letters.using(store.database_alias()).order_by("-failed_at")
        return display.links(
            [
                display.admin_link(
                    "deadletter",
                    letter.pk,
                    f"{letter.failed_at:%Y-%m-%d %H:%M:%S} "
                    f"{letter.error_type or letter.error[:60]}",
                )
                for letter in letters
            ]
        )

    @admin.display(description=_("workflow"))
    def workflow_link(self, task: Task) -> SafeString | str:
        return workflow_link(task)

    @admin.display(description=_("waits on"))
    def depends_on_links(self, task: Task) -> SafeString | str:
        return display.links([display.admin_link("task", t.pk, t) for t in upstream_tasks(task)])

    @admin.display(description=_("dependents"))
    def dependent_links(self, task: Task) -> SafeString | str:
        downstream = task.dependents.using(store.database_alias()).all()
        return display.links([display.admin_link("task", t.pk, t) for t in downstream])
