"""The DeadLetter admin: triage of failed tasks, with error grouping and a note to keep."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from taskqueue import store
from taskqueue.admin import actions, display
from taskqueue.admin.base import StoreDeletesModelAdmin
from taskqueue.models import DeadLetter

# The summary above the list shows the largest groups; the filters reach the rest.
ERROR_GROUPS_SHOWN = 20
HISTORY_COLUMNS = (
    _("attempt"),
    _("outcome"),
    _("worker"),
    _("started at"),
    _("finished at"),
    _("error type"),
    _("error"),
    _("traceback"),
)


class ResolvedFilter(admin.SimpleListFilter):
    """Resolved means the task was retried after it died."""

    title = _("resolved")
    parameter_name = "resolved"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(resolved_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(resolved_at__isnull=True)
        return queryset


def error_groups(queryset: QuerySet[DeadLetter]) -> list[dict[str, Any]]:
    """Count unresolved dead letters by (task type, error type), largest groups first."""
    groups = (
        queryset.filter(resolved_at__isnull=True)
        .order_by()
        .values("task_type", "error_type")
        .annotate(count=Count("id"), unreviewed=Count("id", filter=Q(reviewed=False)))
        .order_by("-count", "task_type", "error_type")
    )
    return [
        {
            **group,
            "url": display.changelist_url(
                "deadletter",
                {
                    "task_type": group["task_type"],
                    "error_type": group["error_type"],
                    "resolved": "no",
                },
            ),
        }
        for group in groups[:ERROR_GROUPS_SHOWN]
    ]


@admin.register(DeadLetter)
class DeadLetterAdmin(StoreDeletesModelAdmin):
    list_display = (
        "id",
        "task_link",
        "task_type",
        "error_type",
        "short_error",
        "attempts",
        "failed_at",
        "reviewed",
        "resolved",
    )
    list_filter = ("reviewed", ResolvedFilter, "task_type", "error_type", "failed_at")
    search_fields = ("task__id", "task_type", "error_type", "error")
    search_help_text = _("Search by task id, task type, error type or error.")
    date_hierarchy = "failed_at"
    ordering = ("-failed_at",)
    actions = (actions.retry_dead_letters, actions.delete_dead_letters, actions.mark_reviewed)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_link",
                    "task_type",
                    "queue",
                    "task_status",
                    "attempts",
                    "failed_at",
                    "resolved_at",
                )
            },
        ),
        (_("Error"), {"fields": ("error_type", "error_text", "traceback_text")}),
        (_("Triage"), {"fields": ("reviewed", "reviewed_by", "reviewed_at", "note")}),
        (_("Task payload"), {"fields": ("task_payload",)}),
        (_("Attempts"), {"fields": ("attempts_table",)}),
    )
    # The note is the one thing a person writes here.
    readonly_fields = tuple(
        field for _name, options in fieldsets for field in options["fields"] if field != "note"
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        return super().get_queryset(request).select_related("task")

    def save_model(self, request: HttpRequest, obj: DeadLetter, form: Any, change: bool) -> None:
        if "note" in form.changed_data:
            store.edit_dead_letter_note(obj.pk, obj.note)

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        # A dead letter goes with its task (the store keeps that pair consistent), so deletion
        # is the action, which says so; deleting one row alone would orphan a failed task.
        if obj is not None:
            return False
        return super().has_delete_permission(request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        store.delete_tasks(list(queryset.values_list("task_id", flat=True)))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        context = {
            **(extra_context or {}),
            "error_groups": error_groups(DeadLetter.objects.using(store.database_alias())),
        }
        return super().changelist_view(request, extra_context=context)

    # --- columns and fields ------------------------------------------------------------------

    @admin.display(description=_("task"), ordering="task_id")
    def task_link(self, letter: DeadLetter) -> SafeString:
        return display.admin_link("task", letter.task_id, letter.task_id)

    @admin.display(description=_("task status"))
    def task_status(self, letter: DeadLetter) -> SafeString:
        return display.status_badge(letter.task.status)

    @admin.display(description=_("error"))
    def short_error(self, letter: DeadLetter) -> str:
        return display.truncated(letter.error)

    @admin.display(description=_("resolved"), boolean=True, ordering="resolved_at")
    def resolved(self, letter: DeadLetter) -> bool:
        return letter.resolved_at is not None

    @admin.display(description=_("error"))
    def error_text(self, letter: DeadLetter) -> SafeString:
        return display.text_block(letter.error)

    @admin.display(description=_("traceback"))
    def traceback_text(self, letter: DeadLetter) -> SafeString:
        return display.text_block(letter.traceback)

    @admin.display(description=_("payload"))
    def task_payload(self, letter: DeadLetter) -> SafeString:
        return display.json_block(letter.task.payload)

    @admin.display(description=_("attempts history"))
    def attempts_table(self, letter: DeadLetter) -> SafeString:
        history = letter.attempts_history
        if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
            return display.json_block(history)
        header = format_html_join("", "<th>{}</th>", ((column,) for column in HISTORY_COLUMNS))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    entry.get("attempt", ""),
                    entry.get("outcome", ""),
                    entry.get("worker", ""),
                    entry.get("started_at") or "-",
                    entry.get("finished_at") or "-",
                    entry.get("error_type", ""),
                    display.text_block(str(entry.get("error", ""))),
                    display.collapsed_text(str(_("show")), str(entry.get("traceback") or "")),
                )
                for entry in history
            ),
        )
        return format_html(
            "<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, rows
        )
