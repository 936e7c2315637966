"""The Worker admin: every ``run_worker`` process, its heartbeat and whether it is alive."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import BooleanField, ExpressionWrapper, QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from taskqueue.admin import display
from taskqueue.admin.base import ReadOnlyModelAdmin
from taskqueue.models import TaskStatus, Worker
from taskqueue.store import worker_rows


@admin.register(Worker)
class WorkerAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "hostname",
        "pid",
        "queue_names",
        "concurrency",
        "status",
        "started_at",
        "last_heartbeat",
        "alive",
        "tasks_processed",
    )
    list_filter = ("status", "hostname")
    search_fields = ("id", "hostname")
    ordering = ("-last_heartbeat",)
    fields = (
        "id",
        "hostname",
        "pid",
        "queue_names",
        "task_type_names",
        "concurrency",
        "status",
        "alive",
        "started_at",
        "last_heartbeat",
        "stopped_at",
        "tasks_processed",
        "running_tasks_link",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        # Alive as the store defines it, on the database's clock.
        return (
            super()
            .get_queryset(request)
            .annotate(is_live=ExpressionWrapper(worker_rows.is_live(), output_field=BooleanField()))
        )

    @admin.display(description=_("alive"), boolean=True, ordering="is_live")
    def alive(self, worker: Worker) -> bool:
        return bool(worker.is_live)  # type: ignore[attr-defined]

    @admin.display(description=_("queues"))
    def queue_names(self, worker: Worker) -> str:
        return _names(worker.queues)

    @admin.display(description=_("task types served"))
    def task_type_names(self, worker: Worker) -> str:
        return _names(worker.task_types)

    @admin.display(description=_("running tasks"))
    def running_tasks_link(self, worker: Worker) -> SafeString:
        return display.changelist_link(
            "task",
            {"claimed_by": worker.id, "status__exact": TaskStatus.RUNNING},
            _("Tasks this worker is running"),
        )


def _names(value: object) -> str:
    # A JSON column: show a list as names, anything else as it is.
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)
