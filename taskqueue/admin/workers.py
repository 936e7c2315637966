"""The Worker admin: every ``run_worker`` process, its heartbeat and whether it is alive."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from taskqueue.admin import display
from taskqueue.admin.base import ReadOnlyModelAdmin
from taskqueue.conf import settings as tq_settings
from taskqueue.models import TaskStatus, Worker, WorkerStatus


def is_alive(worker: Worker) -> bool:
    """A worker is alive while it runs and its heartbeat is fresher than STALE_AFTER."""
    fresh_since = timezone.now() - timedelta(seconds=tq_settings.STALE_AFTER)
    return worker.status == WorkerStatus.RUNNING and worker.last_heartbeat >= fresh_since


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

    @admin.display(description=_("alive"), boolean=True)
    def alive(self, worker: Worker) -> bool:
        return is_alive(worker)

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
