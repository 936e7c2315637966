"""The Schedule admin: create, edit, pause, resume and run-now recurring tasks.

Staff create schedules here; schedules declared in code (``@taskqueue.periodic``) or in
settings show here too, with their definition read-only (workers sync it from the
declaration) and only ``enabled`` editable, so a pause sticks across deploys.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskqueue import store
from taskqueue.admin import display
from taskqueue.admin.actions import batches, report
from taskqueue.admin.base import QueueModelAdmin
from taskqueue.core.priorities import resolve_priority
from taskqueue.core.registry import registry, validate_queue_name
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import Schedule, ScheduleSource
from taskqueue.schedules import definitions as decl
from taskqueue.schedules.cron import CronError, CronSlots, validate_cron
from taskqueue.schedules.lateness import success_due_at
from taskqueue.store import firing, schedule_rows

DEFINITION_FIELDS = (
    "name",
    "task_type",
    "cron",
    "timezone",
    "payload",
    "queue",
    "priority",
    "catch_up",
    "grace",
    "heartbeat_url",
    "description",
)
STATE_FIELDS = (
    "source",
    "next_run_at",
    "last_slot",
    "last_fired_at",
    "last_task_link",
    "last_success_at",
    "success_due",
    "late_since",
    "tasks_link",
    "created_at",
    "updated_at",
)
# Editing these moves the next run to the first slot after now.
TIMING_FIELDS = frozenset({"cron", "timezone", "enabled"})


def _form_field(field: models.Field, **kwargs: Any) -> forms.Field | None:
    # The URL field is replaced by a checked CharField; this only keeps Django from warning
    # about URLField's default scheme when it builds the field anyway (read-only forms).
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


class ScheduleForm(forms.ModelForm):
    """Every field validated the way ``@periodic`` and settings are, with the same messages."""

    # Checked by validate_heartbeat_url (http and https only), not guessed at by URLField.
    heartbeat_url = forms.CharField(
        label=_("heartbeat URL"),
        required=False,
        max_length=500,
        help_text=_(
            "Optional http(s) URL requested after each success, for an outside monitor. Its "
            "host must be listed in TASKQUEUE['HEARTBEAT_HOSTS']."
        ),
    )

    class Meta:
        model = Schedule
        fields = (*DEFINITION_FIELDS, "enabled")
        formfield_callback = _form_field
        help_texts = {
            "cron": _(
                "Five fields (minute hour day-of-month month day-of-week), or six with "
                "seconds last, e.g. '0 3 * * *' or '*/10 * * * * *'; or @daily, @hourly, ..."
            ),
            "timezone": _(
                "IANA name, e.g. 'UTC' or 'Europe/Paris'. The cron is read in this zone's wall "
                "time: a time skipped by daylight saving fires when the gap ends, a repeated "
                "time fires once."
            ),
            "payload": _("A JSON object: the handler's keyword arguments."),
            "queue": _("Empty: the handler's queue."),
            "priority": _(
                "Empty: the handler's priority. critical=100, high=50, normal=0, low=-50."
            ),
            "grace": _(
                "Seconds after a slot by which its run must have succeeded before the schedule "
                "is reported late. Empty: TASKQUEUE['SCHEDULE_GRACE']."
            ),
        }

    def clean_cron(self) -> str:
        try:
            return validate_cron(self.cleaned_data["cron"])
        except CronError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_timezone(self) -> str:
        return self._checked(decl.validate_timezone, self.cleaned_data["timezone"])

    def clean_task_type(self) -> str:
        task_type = self.cleaned_data["task_type"]
        if task_type not in registry:
            raise forms.ValidationError(
                _("No handler is registered for task type %(name)r. Registered: %(names)s."),
                params={"name": task_type, "names": ", ".join(registry.names()) or "-"},
            )
        return task_type

    def clean_payload(self) -> dict[str, Any]:
        return self._checked(decl.validate_payload, self.cleaned_data.get("payload"))

    def clean_queue(self) -> str:
        queue = self.cleaned_data.get("queue") or ""
        if queue:
            self._checked(validate_queue_name, queue)
        return queue

    def clean_priority(self) -> int | None:
        priority = self.cleaned_data.get("priority")
        if priority is not None:
            self._checked(resolve_priority, priority)
        return priority

    def clean_grace(self) -> float | None:
        return self._checked(decl.validate_grace, self.cleaned_data.get("grace"))

    def clean_heartbeat_url(self) -> str:
        # Typed in by a user: the host must be allow-listed and its addresses public.
        url = self.cleaned_data.get("heartbeat_url")
        return self._checked(partial(decl.validate_heartbeat_url, entered_in_admin=True), url)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        task_type, payload = cleaned.get("task_type"), cleaned.get("payload")
        if task_type and payload is not None and "payload" in self.fields:
            try:
                decl.validate_payload_for_task(task_type, payload)
            except decl.ScheduleDefinitionError as exc:
                self.add_error("payload", str(exc))
        return cleaned

    @staticmethod
    def _checked(validate: Any, value: Any) -> Any:
        try:
            return validate(value)
        except (decl.ScheduleDefinitionError, CronError, InvalidTaskOption) as exc:
            raise forms.ValidationError(str(exc)) from None


# --- actions -------------------------------------------------------------------------------


@admin.action(description=_("Pause selected schedules"), permissions=["change"])
def pause_schedules(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    ids = list(queryset.values_list("pk", flat=True))
    paused = sum(firing.pause_schedules(batch) for batch in batches(ids))
    parts = [
        ngettext("Paused %(count)d schedule.", "Paused %(count)d schedules.", paused)
        % {"count": paused}
    ]
    if len(ids) > paused:
        parts.append(
            ngettext(
                "%(count)d was already paused.", "%(count)d were already paused.", len(ids) - paused
            )
            % {"count": len(ids) - paused}
        )
    report(modeladmin, request, parts)


@admin.action(description=_("Resume selected schedules"), permissions=["change"])
def resume_schedules(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> None:
    ids = list(queryset.values_list("pk", flat=True))
    resumed = sum(firing.resume_schedules(batch) for batch in batches(ids))
    parts = [
        ngettext(
            "Resumed %(count)d schedule from its next slot.",
            "Resumed %(count)d schedules from their next slots.",
            resumed,
        )
        % {"count": resumed}
    ]
    if len(ids) > resumed:
        parts.append(
            ngettext("%(count)d was not paused.", "%(count)d were not paused.", len(ids) - resumed)
            % {"count": len(ids) - resumed}
        )
    report(modeladmin, request, parts)


@admin.action(description=_("Run selected schedules now"), permissions=["change"])
def run_schedules_now(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> None:
    """Enqueue one task per selected schedule now; its slots are not affected."""
    started = 0
    failures: list[str] = []
    for schedule in queryset.order_by("name"):
        try:
            firing.run_now(schedule, created_by=request.user)
        except (UnknownTaskType, InvalidPayload, InvalidTaskOption) as exc:
            failures.append(f"{schedule.name}: {exc}")
            continue
        started += 1
    parts = [
        ngettext("Enqueued %(count)d task now.", "Enqueued %(count)d tasks now.", started)
        % {"count": started}
    ]
    if failures:
        parts.append(_("Could not run: %(failures)s") % {"failures": "; ".join(failures)})
    report(modeladmin, request, parts)


# --- the admin -----------------------------------------------------------------------------


@admin.register(Schedule)
class ScheduleAdmin(QueueModelAdmin):
    form = ScheduleForm
    list_display = (
        "name",
        "task_type",
        "cron",
        "timezone",
        "enabled",
        "next_run_at",
        "last_success_at",
        "late",
        "source",
    )
    list_filter = ("enabled", "source", "catch_up", "timezone")
    search_fields = ("name", "task_type", "description")
    search_help_text = _("Search by name, task type or description.")
    ordering = ("name",)
    actions = (pause_schedules, resume_schedules, run_schedules_now)
    fieldsets = (
        (None, {"fields": (*DEFINITION_FIELDS, "enabled")}),
        (_("State"), {"fields": STATE_FIELDS}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The database's clock, read once per page, decides lateness.
        return super().get_queryset(request).annotate(db_now=Now())

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None and obj.source != ScheduleSource.ADMIN:
            # Synced from the declaration at each worker start: edits would be overwritten.
            return (*DEFINITION_FIELDS, *STATE_FIELDS)
        return STATE_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Unlike tasks, schedules are made by hand.
        return admin.ModelAdmin.has_add_permission(self, request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.source != ScheduleSource.ADMIN:
            return False  # the next worker start would bring it back: pause it instead
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        now = store.db_now(store.database_alias())
        timing_changed = not change or bool(TIMING_FIELDS & set(form.changed_data))
        if timing_changed:
            # A new or re-timed schedule starts at its next slot; nothing is caught up.
            obj.next_run_at = CronSlots(obj.cron, obj.timezone).next_after(now)
            obj.late_since = None
        obj.updated_at = now
        if not change:
            obj.source = ScheduleSource.ADMIN
            schedule_rows.save_from_admin(obj, None)
            return
        fields = [*form.changed_data, "updated_at"]
        if timing_changed:
            fields += ["next_run_at", "late_since"]
        schedule_rows.save_from_admin(obj, fields)

    @admin.display(description=_("late"), boolean=True)
    def late(self, schedule: Schedule) -> bool | None:
        if not schedule.enabled:
            return False
        due_at = success_due_at(schedule)
        now = getattr(schedule, "db_now", None)
        if due_at is None or now is None:
            return None
        return due_at < now

    @admin.display(description=_("next success due by"))
    def success_due(self, schedule: Schedule) -> str:
        if schedule.pk is None:
            return "-"
        if not schedule.enabled:
            return _("- (paused)")
        due_at = success_due_at(schedule)
        return due_at.isoformat() if due_at else "-"

    @admin.display(description=_("last task"))
    def last_task_link(self, schedule: Schedule) -> SafeString | str:
        if schedule.last_task_id is None:
            return "-"
        return display.admin_link("task", schedule.last_task_id, schedule.last_task_id)

    @admin.display(description=_("tasks"))
    def tasks_link(self, schedule: Schedule) -> SafeString | str:
        if schedule.pk is None:
            return "-"
        return display.changelist_link(
            "task", {"schedule": schedule.pk}, _("Tasks fired by this schedule")
        )
