"""Recurring tasks: the ``Schedule`` row (from code, settings or the admin) and its choices."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from taskqueue.models.tasks import Task


class ScheduleSource(models.TextChoices):
    CODE = "code", _("Code (@periodic)")
    SETTINGS = "settings", _("Settings (SCHEDULES)")
    ADMIN = "admin", _("Admin")


class CatchUp(models.TextChoices):
    ONCE = "once", _("Once, for the latest missed slot")
    ALL = "all", _("Every missed slot")
    SKIP = "skip", _("Skip missed slots")


class Schedule(models.Model):
    """A recurring task: a cron expression in a time zone, and what to enqueue each slot."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    task_type = models.CharField(_("task type"), max_length=200)
    cron = models.CharField(_("cron expression"), max_length=120)
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC")
    payload = models.JSONField(_("payload"), default=dict, blank=True)
    queue = models.CharField(_("queue"), max_length=100, blank=True, default="")
    priority = models.SmallIntegerField(_("priority"), null=True, blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    source = models.CharField(
        _("defined in"), max_length=16, choices=ScheduleSource.choices, default=ScheduleSource.ADMIN
    )
    catch_up = models.CharField(
        _("after downtime"), max_length=8, choices=CatchUp.choices, default=CatchUp.ONCE
    )
    # Seconds after a slot by which its run must have succeeded (NULL: SCHEDULE_GRACE).
    grace = models.FloatField(_("grace (seconds)"), null=True, blank=True)
    heartbeat_url = models.URLField(_("heartbeat URL"), max_length=500, blank=True, default="")
    description = models.TextField(_("description"), blank=True, default="")
    next_run_at = models.DateTimeField(_("next run at"), null=True, blank=True)
    last_slot = models.DateTimeField(_("last slot fired"), null=True, blank=True)
    last_fired_at = models.DateTimeField(_("last fired at"), null=True, blank=True)
    last_task = models.ForeignKey(
        Task,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("last task"),
    )
    last_success_at = models.DateTimeField(_("last success at"), null=True, blank=True)
    # Set when the schedule was reported late (signal sent once); cleared by a success.
    late_since = models.DateTimeField(_("late since"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())

    class Meta:
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        ordering = ("name",)
        indexes = [
            models.Index(fields=["enabled", "next_run_at"], name="taskqueue_schedule_due_idx")
        ]

    def __str__(self) -> str:
        return self.name
