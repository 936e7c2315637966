"""Admin actions: each one calls a ``taskqueue.store`` verb and reports what it changed.

Actions work in batches of ids so that "select all" on a large table never builds one
enormous query or one endless transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from taskqueue import store
from taskqueue.models import UNFINISHED_STATES, Task, TaskStatus

BATCH_SIZE = 500
CONFIRM_DELETE_TEMPLATE = "admin/taskqueue/confirm_delete_tasks.html"


def batches(ids: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[list[Any]]:
    """Yield ``ids`` in lists of at most ``size``."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def report(modeladmin: admin.ModelAdmin, request: HttpRequest, parts: list[str]) -> None:
    """Send one message: success when only the first part (the change) is present."""
    level = messages.SUCCESS if len(parts) == 1 else messages.WARNING
    modeladmin.message_user(request, " ".join(parts), level)


# --- shared by the task and dead-letter actions ---------------------------------------------


def requeue(
    modeladmin: admin.ModelAdmin, request: HttpRequest, task_ids: list[uuid.UUID], total: int
) -> None:
    """Requeue dead tasks and report how many were retried and why others were skipped."""
    requeued = 0
    key_held = 0
    for batch in batches(task_ids):
        result = store.requeue_dead(batch)
        requeued += result.requeued
        key_held += len(result.skipped)
    not_dead = total - requeued - key_held
    parts = [
        ngettext("Retried %(count)d task.", "Retried %(count)d tasks.", requeued)
        % {"count": requeued}
    ]
    if not_dead:
        parts.append(
            ngettext(
                "Skipped %(count)d task that is not failed (only dead tasks can be retried).",
                "Skipped %(count)d tasks that are not failed (only dead tasks can be retried).",
                not_dead,
            )
            % {"count": not_dead}
        )
    if key_held:
        parts.append(
            ngettext(
                "Skipped %(count)d task whose idempotency key is held by a newer unfinished task.",
                "Skipped %(count)d tasks whose idempotency key is held by newer unfinished tasks.",
                key_held,
            )
            % {"count": key_held}
        )
    report(modeladmin, request, parts)


def delete_through_store(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    tasks: QuerySet[Task],
) -> TemplateResponse | None:
    """Ask for confirmation, then delete ``tasks`` (attempts and dead letters too) via the store.

    ``queryset`` holds the selected rows of the admin's own model, which are logged as deleted;
    ``tasks`` the tasks behind them.
    """
    if not request.POST.get("post"):
        return confirm_delete(modeladmin, request, queryset, tasks)
    task_ids = list(tasks.values_list("pk", flat=True))
    is_task = queryset.model is Task
    task_path, status_path = ("pk", "status") if is_task else ("task_id", "task__status")
    deleted = 0
    for batch in batches(task_ids):
        # Logged before deleting, like Django's own delete action; running tasks stay.
        doomed = queryset.filter(**{f"{task_path}__in": batch}).exclude(
            **{status_path: TaskStatus.RUNNING}
        )
        modeladmin.log_deletions(request, doomed)
        deleted += store.delete_tasks(batch)
    kept = len(task_ids) - deleted
    parts = [
        ngettext("Deleted %(count)d task.", "Deleted %(count)d tasks.", deleted)
        % {"count": deleted}
    ]
    if kept:
        parts.append(
            ngettext(
                "Kept %(count)d running task: a task is deleted only when it is not running.",
                "Kept %(count)d running tasks: a task is deleted only when it is not running.",
                kept,
            )
            % {"count": kept}
        )
    report(modeladmin, request, parts)
    return None


def confirm_delete(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    tasks: QuerySet[Task],
) -> TemplateResponse:
    """Render the confirmation page; its form posts the same selection back with post=yes."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Are you sure?"),
        "subtitle": None,
        "opts": modeladmin.model._meta,
        "media": modeladmin.media,
        "selected_count": queryset.count(),
        "task_count": tasks.count(),
        "running_count": tasks.filter(status=TaskStatus.RUNNING).count(),
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        # Only the ids posted from the page travel back; "select all" travels as the flag,
        # so the confirmation form stays small however many rows it covers.
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, CONFIRM_DELETE_TEMPLATE, context)


# --- Task actions ---------------------------------------------------------------------------


@admin.action(description=gettext_lazy("Retry selected failed tasks"), permissions=["change"])
def retry_tasks(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    """Put the selected dead tasks back to pending with a fresh attempt budget."""
    total = queryset.count()
    dead_ids = list(queryset.filter(status=TaskStatus.FAILED).values_list("pk", flat=True))
    requeue(modeladmin, request, dead_ids, total)


@admin.action(description=gettext_lazy("Cancel selected tasks"), permissions=["change"])
def cancel_tasks(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    """Cancel tasks that have not started; ask running ones to stop."""
    total = queryset.count()
    unfinished_ids = list(
        queryset.filter(status__in=UNFINISHED_STATES).values_list("pk", flat=True)
    )
    cancelled = sum(store.cancel_tasks(batch) for batch in batches(unfinished_ids))
    running = len(unfinished_ids) - cancelled
    finished = total - len(unfinished_ids)
    parts = [
        ngettext("Cancelled %(count)d task.", "Cancelled %(count)d tasks.", cancelled)
        % {"count": cancelled}
    ]
    if running:
        parts.append(
            ngettext(
                "Did not cancel %(count)d running task; it was asked to stop "
                "(handlers see ctx.cancel_requested).",
                "Did not cancel %(count)d running tasks; they were asked to stop "
                "(handlers see ctx.cancel_requested).",
                running,
            )
            % {"count": running}
        )
    if finished:
        parts.append(
            ngettext(
                "Did not cancel %(count)d task that had already finished.",
                "Did not cancel %(count)d tasks that had already finished.",
                finished,
            )
            % {"count": finished}
        )
    report(modeladmin, request, parts)


@admin.action(description=gettext_lazy("Delete selected tasks"), permissions=["delete"])
def delete_tasks(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> TemplateResponse | None:
    """Delete tasks that are not running, with their attempts and dead letters."""
    return delete_through_store(modeladmin, request, queryset, queryset)


# --- DeadLetter actions ---------------------------------------------------------------------


def _dead_letter_task_ids(queryset: QuerySet) -> list[uuid.UUID]:
    return list(queryset.order_by().values_list("task_id", flat=True).distinct())


@admin.action(
    description=gettext_lazy("Retry the tasks of selected dead letters"), permissions=["change"]
)
def retry_dead_letters(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> None:
    """Requeue the dead tasks behind the selected dead letters."""
    task_ids = _dead_letter_task_ids(queryset)
    requeue(modeladmin, request, task_ids, len(task_ids))


@admin.action(
    description=gettext_lazy("Delete the tasks of selected dead letters"), permissions=["delete"]
)
def delete_dead_letters(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> TemplateResponse | None:
    """Delete the dead tasks behind the selected dead letters, and the letters with them."""
    tasks = Task.objects.using(queryset.db).filter(id__in=queryset.values("task_id"))
    return delete_through_store(modeladmin, request, queryset, tasks)


@admin.action(
    description=gettext_lazy("Mark selected dead letters reviewed"), permissions=["change"]
)
def mark_reviewed(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    """Record that the current user has looked at the selected dead letters."""
    ids = list(queryset.values_list("pk", flat=True))
    marked = sum(store.mark_reviewed(batch, request.user) for batch in batches(ids))
    already = len(ids) - marked
    parts = [
        ngettext(
            "Marked %(count)d dead letter reviewed.",
            "Marked %(count)d dead letters reviewed.",
            marked,
        )
        % {"count": marked}
    ]
    if already:
        parts.append(
            ngettext("%(count)d was already reviewed.", "%(count)d were already reviewed.", already)
            % {"count": already}
        )
    report(modeladmin, request, parts)
