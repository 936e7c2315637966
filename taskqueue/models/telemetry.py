"""Monitoring rows: metrics per minute and in total, the event log and alert state."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class MetricsMinute(models.Model):
    """What one worker recorded in one minute for one task type and queue.

    Each worker writes only its own rows (no contention between workers); the stats view
    sums them over a window. Histograms count outcomes per bucket of
    ``taskqueue.monitoring.metrics.TIME_BUCKETS`` (the last count is everything above).
    """

    minute = models.DateTimeField(_("minute"))
    worker_id = models.CharField(_("worker"), max_length=255)
    task_type = models.CharField(_("task type"), max_length=200)
    queue = models.CharField(_("queue"), max_length=100)
    succeeded = models.PositiveIntegerField(_("succeeded"), default=0)
    failed = models.PositiveIntegerField(_("failed attempts"), default=0)
    retried = models.PositiveIntegerField(_("retries scheduled"), default=0)
    dead_lettered = models.PositiveIntegerField(_("dead-lettered"), default=0)
    cancelled = models.PositiveIntegerField(_("cancelled"), default=0)
    timed_out = models.PositiveIntegerField(_("timed out"), default=0)
    run_seconds = models.FloatField(_("run time total (s)"), default=0.0)
    wait_seconds = models.FloatField(_("wait time total (s)"), default=0.0)
    run_histogram = models.JSONField(_("run time histogram"), default=list)
    wait_histogram = models.JSONField(_("wait time histogram"), default=list)

    class Meta:
        verbose_name = _("metrics minute")
        verbose_name_plural = _("metrics minutes")
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "worker_id", "task_type", "queue"],
                name="taskqueue_metrics_minute_unique",
            )
        ]
        indexes = [models.Index(fields=["minute"], name="taskqueue_metrics_minute_idx")]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.task_type}@{self.queue} by {self.worker_id}"


class MetricsTotal(models.Model):
    """Running totals per task type and queue since the first worker ran: never decrease
    (Prometheus counters), whatever retention prunes."""

    task_type = models.CharField(_("task type"), max_length=200)
    queue = models.CharField(_("queue"), max_length=100)
    succeeded = models.PositiveBigIntegerField(_("succeeded"), default=0)
    failed = models.PositiveBigIntegerField(_("failed attempts"), default=0)
    retried = models.PositiveBigIntegerField(_("retries scheduled"), default=0)
    dead_lettered = models.PositiveBigIntegerField(_("dead-lettered"), default=0)
    cancelled = models.PositiveBigIntegerField(_("cancelled"), default=0)
    timed_out = models.PositiveBigIntegerField(_("timed out"), default=0)
    run_seconds = models.FloatField(_("run time total (s)"), default=0.0)
    run_histogram = models.JSONField(_("run time histogram"), default=list)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())

    class Meta:
        verbose_name = _("metrics total")
        verbose_name_plural = _("metrics totals")
        constraints = [
            models.UniqueConstraint(
                fields=["task_type", "queue"], name="taskqueue_metrics_total_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.task_type}@{self.queue}"


class EventRecord(models.Model):
    """A lifecycle event kept for the live stream (``taskqueue.urls`` ``events/``), so it
    reaches every web process from every worker, on both databases."""

    id = models.BigAutoField(primary_key=True)
    time = models.DateTimeField(_("time"), db_default=Now())
    name = models.CharField(_("event"), max_length=50)
    severity = models.CharField(_("severity"), max_length=10)
    task_id = models.UUIDField(_("task"), null=True, blank=True)
    task_type = models.CharField(_("task type"), max_length=200, blank=True, default="")
    queue = models.CharField(_("queue"), max_length=100, blank=True, default="")
    worker_id = models.CharField(_("worker"), max_length=255, blank=True, default="")
    message = models.TextField(_("message"), blank=True, default="")
    data = models.JSONField(_("data"), default=dict, blank=True)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        indexes = [models.Index(fields=["time"], name="taskqueue_event_time_idx")]

    def __str__(self) -> str:
        return f"{self.name} {self.task_id or ''}"


class AlertState(models.Model):
    """Throttling of one kind of alert across every process: who sent it last, and what was
    held back since, for the summary."""

    key = models.CharField(_("alert"), max_length=255, unique=True)
    last_sent_at = models.DateTimeField(_("last sent at"), null=True, blank=True)
    suppressed = models.PositiveIntegerField(_("held back since"), default=0)
    samples = models.JSONField(_("held-back samples"), default=list, blank=True)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())

    class Meta:
        verbose_name = _("alert state")
        verbose_name_plural = _("alert states")

    def __str__(self) -> str:
        return self.key
