"""Worker processes as the database knows them: one row per running worker, with its heartbeat."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class WorkerStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    STOPPING = "stopping", _("Stopping")
    STOPPED = "stopped", _("Stopped")
    LOST = "lost", _("Lost (stopped heartbeating)")


class Worker(models.Model):
    """A ``run_worker`` process and its heartbeat."""

    id = models.CharField(_("worker id"), max_length=255, primary_key=True)
    hostname = models.CharField(_("host"), max_length=255)
    pid = models.PositiveIntegerField(_("process id"))
    queues = models.JSONField(_("queues"), default=list)
    task_types = models.JSONField(_("task types served"), default=list)
    concurrency = models.PositiveIntegerField(_("concurrency"))
    status = models.CharField(
        _("status"), max_length=16, choices=WorkerStatus.choices, default=WorkerStatus.RUNNING
    )
    started_at = models.DateTimeField(_("started at"), db_default=Now())
    last_heartbeat = models.DateTimeField(_("last heartbeat"), db_default=Now())
    stopped_at = models.DateTimeField(_("stopped at"), null=True, blank=True)
    tasks_processed = models.PositiveBigIntegerField(_("tasks processed"), default=0)

    class Meta:
        verbose_name = _("worker")
        verbose_name_plural = _("workers")
        ordering = ("-last_heartbeat",)
        indexes = [
            models.Index(fields=["status", "last_heartbeat"], name="taskqueue_worker_live_idx")
        ]

    def __str__(self) -> str:
        return self.id
