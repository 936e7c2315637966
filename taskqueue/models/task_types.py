"""Task types and queues as the database knows them: flow control (pause, rate) and circuit
state."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class CircuitState(models.TextChoices):
    CLOSED = "closed", _("Closed")
    OPEN = "open", _("Open")
    HALF_OPEN = "half_open", _("Half open (probing)")


class TaskType(models.Model):
    """A task type as the database knows it: served by workers, tunable in the admin."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    description = models.TextField(_("description"), blank=True, default="")
    is_active = models.BooleanField(_("served by a live worker"), default=False)
    paused = models.BooleanField(_("paused"), default=False)
    critical = models.BooleanField(_("critical"), default=False)
    default_queue = models.CharField(_("queue"), max_length=100, default="default")
    default_priority = models.SmallIntegerField(_("priority"), default=0)
    default_max_attempts = models.PositiveIntegerField(_("max attempts"), null=True, blank=True)
    default_retry = models.JSONField(_("retry strategy"), null=True, blank=True)
    default_timeout = models.FloatField(_("timeout (seconds)"), null=True, blank=True)
    rate_limit = models.CharField(_("rate limit"), max_length=32, blank=True, default="")
    concurrency_limit = models.PositiveIntegerField(_("concurrency limit"), null=True, blank=True)
    circuit_state = models.CharField(
        _("circuit"), max_length=16, choices=CircuitState.choices, default=CircuitState.CLOSED
    )
    circuit_opened_at = models.DateTimeField(_("circuit opened at"), null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    # Circuit breaker settings from the handler (NULL threshold: no breaker).
    circuit_threshold = models.PositiveIntegerField(
        _("circuit opens after (failures)"), null=True, blank=True
    )
    circuit_cooldown = models.FloatField(_("circuit cool-down (seconds)"), null=True, blank=True)
    # Rate limit token bucket, shared by every worker through this row.
    rate_tokens = models.FloatField(_("rate tokens"), null=True, blank=True)
    rate_updated_at = models.DateTimeField(_("rate tokens counted at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())
    last_seen_at = models.DateTimeField(_("last seen at"), null=True, blank=True)

    class Meta:
        verbose_name = _("task type")
        verbose_name_plural = _("task types")
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Queue(models.Model):
    """A queue as the database knows it: workers claim nothing from a paused one.

    A row exists for every queue a worker serves or a task was sent to; pausing holds back
    every task type in it, on every host, beside the pause of a single task type.
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    paused = models.BooleanField(_("paused"), default=False)
    paused_at = models.DateTimeField(_("paused at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())

    class Meta:
        verbose_name = _("queue")
        verbose_name_plural = _("queues")
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name
