"""The TaskType admin: what each registered type is and how it is configured, read-only.

Pause, resume and circuit reset arrive together with the worker code that enforces them;
until then the page offers no control that would not take effect.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from taskqueue.admin import display
from taskqueue.admin.base import ReadOnlyModelAdmin
from taskqueue.models import TaskType
from taskqueue.priorities import priority_label


@admin.register(TaskType)
class TaskTypeAdmin(ReadOnlyModelAdmin):
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
        "last_seen_at",
    )
    list_filter = ("is_active", "paused", "critical", "circuit_state", "default_queue")
    search_fields = ("name", "description")
    ordering = ("name",)
    fields = (
        "name",
        "description",
        "tasks_link",
        "is_active",
        "paused",
        "critical",
        "default_queue",
        "priority_name",
        "default_max_attempts",
        "retry_json",
        "default_timeout",
        "rate_limit",
        "concurrency_limit",
        "circuit_state",
        "circuit_opened_at",
        "consecutive_failures",
        "created_at",
        "updated_at",
        "last_seen_at",
    )
    readonly_fields = fields

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
