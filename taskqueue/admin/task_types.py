"""The TaskType admin: what each registered type is, how it is configured, and its flow
control: pause, resume and circuit reset (each needs ``taskqueue.change_tasktype``).

Rows are never edited by hand: workers write the configuration at start-up, and the actions
go through the store (``taskqueue.store.task_type_rows``).
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskqueue import store
from taskqueue.admin import display
from taskqueue.admin.actions import report
from taskqueue.admin.base import QueueModelAdmin
from taskqueue.core.priorities import priority_label
from taskqueue.models import TaskType


def _apply(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[TaskType],
    change: Callable[[list[str]], list[str]],
    log_message: str,
) -> tuple[int, int]:
    """Run a flow verb on the selected types, log the ones it changed; return (changed,
    selected)."""
    selected = list(queryset.order_by("name"))
    changed = set(change([task_type.name for task_type in selected]))
    for task_type in selected:
        if task_type.name in changed:
            modeladmin.log_change(request, task_type, log_message)
    return len(changed), len(selected)


@admin.action(description=_("Pause selected task types"), permissions=["change"])
def pause_task_types(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[TaskType]
) -> None:
    """Stop claiming the selected types; tasks already claimed finish."""
    paused, total = _apply(modeladmin, request, queryset, store.pause_task_types, "Paused.")
    parts = [
        ngettext("Paused %(count)d task type.", "Paused %(count)d task types.", paused)
        % {"count": paused}
    ]
    if total - paused:
        parts.append(
            ngettext(
                "%(count)d was already paused.", "%(count)d were already paused.", total - paused
            )
            % {"count": total - paused}
        )
    report(modeladmin, request, parts)


@admin.action(description=_("Resume selected task types"), permissions=["change"])
def resume_task_types(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[TaskType]
) -> None:
    """Let workers claim the selected paused types again."""
    resumed, total = _apply(modeladmin, request, queryset, store.resume_task_types, "Resumed.")
    parts = [
        ngettext("Resumed %(count)d task type.", "Resumed %(count)d task types.", resumed)
        % {"count": resumed}
    ]
    if total - resumed:
        parts.append(
            ngettext("%(count)d was not paused.", "%(count)d were not paused.", total - resumed)
            % {"count": total - resumed}
        )
    report(modeladmin, request, parts)


@admin.action(description=_("Reset the circuit of selected task types"), permissions=["change"])
def reset_circuits(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[TaskType]
) -> None:
    """Close the selected types' circuits and forget their failures."""
    closed, total = _apply(
        modeladmin, request, queryset, store.reset_circuits, "Reset the circuit breaker."
    )
    parts = [
        ngettext(
            "Closed the circuit of %(count)d task type.",
            "Closed the circuits of %(count)d task types.",
            closed,
        )
        % {"count": closed}
    ]
    if total - closed:
        parts.append(
            ngettext(
                "%(count)d was already closed (its failure count is reset).",
                "%(count)d were already closed (their failure counts are reset).",
                total - closed,
            )
            % {"count": total - closed}
        )
    report(modeladmin, request, parts)


@admin.register(TaskType)
class TaskTypeAdmin(QueueModelAdmin):
    actions = (pause_task_types, resume_task_types, reset_circuits)
    list_display = (
        "name",
        "short_description",
        "is_active",
        "paused",
        "critical",
        "default_queue",
        "priority_name",
        "rate_limit",
        "concurrency_limit",
        "circuit_state",
        "consecutive_failures",
        "last_seen_at",
    )
    list_filter = ("is_active", "paused", "critical", "circuit_state", "default_queue")
    search_fields = ("name", "description")
    ordering = ("name",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "description",
                    "tasks_link",
                    "is_active",
                    "critical",
                    "default_queue",
                    "priority_name",
                    "default_max_attempts",
                    "retry_json",
                    "default_timeout",
                )
            },
        ),
        (
            _("Flow control"),
            {
                "fields": (
                    "paused",
                    "rate_limit",
                    "concurrency_limit",
                    "circuit_state",
                    "circuit_opened_at",
                    "consecutive_failures",
                    "circuit_threshold",
                    "circuit_cooldown",
                )
            },
        ),
        (_("Dates"), {"fields": ("created_at", "updated_at", "last_seen_at")}),
    )
    readonly_fields = tuple(field for _name, options in fieldsets for field in options["fields"])

    def has_change_permission(self, request: HttpRequest, obj: TaskType | None = None) -> bool:
        # The model-level permission gates the actions; no row is edited through a form.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: TaskType | None = None) -> bool:
        # Workers register their types at start-up: a deleted row would only come back.
        return False

    @admin.display(description=_("description"))
    def short_description(self, task_type: TaskType) -> str:
        return display.truncated(task_type.description, 60)

    @admin.display(description=_("priority"), ordering="default_priority")
    def priority_name(self, task_type: TaskType) -> str:
        return priority_label(task_type.default_priority)

    @admin.display(description=_("retry strategy"))
    def retry_json(self, task_type: TaskType) -> SafeString:
        return display.json_block(task_type.default_retry)

    @admin.display(description=_("tasks"))
    def tasks_link(self, task_type: TaskType) -> SafeString:
        return display.changelist_link(
            "task", {"task_type": task_type.name}, _("Tasks of this type")
        )
