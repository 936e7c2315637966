"""Tasks and what hangs off them: dependencies, the attempt log, dead letters and the
workflow a task belongs to."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from taskqueue.core.priorities import priority_label


class TaskStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SCHEDULED = "scheduled", _("Scheduled")
    WAITING = "waiting", _("Waiting on dependencies")
    RUNNING = "running", _("Running")
    RETRYING = "retrying", _("Retrying")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed (dead letter)")
    CANCELLED = "cancelled", _("Cancelled")


# A task in one of these states is claimed as soon as its run_at has passed.
READY_STATES = (TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.RETRYING)
# Not finished: an idempotency key is held, and the task can still be cancelled.
UNFINISHED_STATES = (*READY_STATES, TaskStatus.WAITING, TaskStatus.RUNNING)
FINISHED_STATES = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskQuerySet(models.QuerySet["Task"]):
    def ready(self) -> TaskQuerySet:
        return self.filter(status__in=READY_STATES)

    def due(self) -> TaskQuerySet:
        return self.ready().filter(run_at__lte=Now())

    def running(self) -> TaskQuerySet:
        return self.filter(status=TaskStatus.RUNNING)

    def unfinished(self) -> TaskQuerySet:
        return self.filter(status__in=UNFINISHED_STATES)

    def finished(self) -> TaskQuerySet:
        return self.filter(status__in=FINISHED_STATES)

    def dead(self) -> TaskQuerySet:
        return self.filter(status=TaskStatus.FAILED)


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_type = models.CharField(_("task type"), max_length=200)
    queue = models.CharField(_("queue"), max_length=100, default="default")
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(
        _("status"), max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING
    )
    priority = models.SmallIntegerField(_("priority"), default=0)
    run_at = models.DateTimeField(_("run at"), db_default=Now())
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    max_attempts = models.PositiveIntegerField(_("max attempts"), default=3)
    retry = models.JSONField(_("retry strategy"), null=True, blank=True)
    timeout = models.FloatField(_("timeout (seconds)"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True, default="")
    result = models.JSONField(_("result"), null=True, blank=True)
    progress = models.FloatField(_("progress"), null=True, blank=True)
    progress_message = models.CharField(
        _("progress message"), max_length=255, blank=True, default=""
    )
    # NULL, not "", for "no key": the partial unique constraint must ignore keyless tasks.
    idempotency_key = models.CharField(  # noqa: DJ001
        _("idempotency key"), max_length=255, null=True, blank=True
    )
    depends_on = models.ManyToManyField(
        "self",
        symmetrical=False,
        through="TaskDependency",
        related_name="dependents",
        blank=True,
        verbose_name=_("depends on"),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("created by"),
    )
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    updated_at = models.DateTimeField(_("updated at"), db_default=Now())
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    # NULL reads "no worker holds it".
    claimed_by = models.CharField(  # noqa: DJ001
        _("claimed by worker"), max_length=255, null=True, blank=True
    )
    # A fresh token for every claim: every write about a running task is fenced by it, so a
    # worker that lost its claim cannot overwrite the new owner's outcome.
    lease_id = models.UUIDField(_("lease"), null=True, blank=True, editable=False)
    cancel_requested = models.BooleanField(_("cancel requested"), default=False)
    # Workflows: the run this task belongs to, and whether other tasks wait on it (so the
    # completion path looks for dependents only when there are some).
    workflow = models.ForeignKey(
        "Workflow",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        verbose_name=_("workflow"),
    )
    has_dependents = models.BooleanField(_("has dependents"), default=False)
    # Recurring tasks: the schedule that fired this task and the slot it fired for.
    schedule = models.ForeignKey(
        "Schedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        verbose_name=_("schedule"),
    )
    schedule_slot = models.DateTimeField(_("schedule slot"), null=True, blank=True)
    # "Rerun" copies a finished task to a new pending one that points back at it.
    rerun_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reruns",
        verbose_name=_("rerun of"),
    )

    objects = TaskQuerySet.as_manager()

    class Meta:
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        ordering = ("-created_at",)
        indexes = [
            # The claim reads only this partial index, in exactly its order, so finished
            # history (however large) never slows claiming.
            models.Index(
                fields=["-priority", "run_at", "created_at"],
                name="taskqueue_task_due_idx",
                condition=Q(status__in=READY_STATES),
            ),
            models.Index(
                fields=["claimed_by"],
                name="taskqueue_task_running_idx",
                condition=Q(status=TaskStatus.RUNNING),
            ),
            models.Index(fields=["task_type", "status"], name="taskqueue_task_type_status"),
            # Partial, so the planner never mistakes it for a way to find ready rows.
            models.Index(
                fields=["status", "completed_at"],
                name="taskqueue_task_finished_idx",
                condition=Q(status__in=FINISHED_STATES),
            ),
            models.Index(fields=["created_at"], name="taskqueue_task_created_idx"),
            # Tasks blocked on dependencies, for the sweep that releases any a race left behind.
            models.Index(
                fields=["created_at"],
                name="taskqueue_task_waiting_idx",
                condition=Q(status=TaskStatus.WAITING),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                name="taskqueue_task_idempotency_key_unfinished",
                condition=Q(idempotency_key__isnull=False) & Q(status__in=UNFINISHED_STATES),
            ),
            # Each slot of a schedule fires once, however many workers race for it.
            models.UniqueConstraint(
                fields=["schedule", "schedule_slot"],
                name="taskqueue_task_schedule_slot_unique",
                condition=Q(schedule__isnull=False) & Q(schedule_slot__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_type} {self.id} ({self.status})"

    @property
    def priority_label(self) -> str:
        return priority_label(self.priority)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATES


class TaskDependency(models.Model):
    """``task`` waits until ``depends_on`` has completed."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    depends_on = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    # The order ``depends_on`` was given in: upstream results reach the handler in it.
    position = models.PositiveIntegerField(_("position"), default=0)

    class Meta:
        verbose_name = _("task dependency")
        verbose_name_plural = _("task dependencies")
        constraints = [
            models.UniqueConstraint(
                fields=["task", "depends_on"], name="taskqueue_dependency_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} waits on {self.depends_on_id}"


class AttemptOutcome(models.TextChoices):
    FAILED = "failed", _("Failed")
    TIMED_OUT = "timed_out", _("Timed out")
    WORKER_LOST = "worker_lost", _("Worker lost")
    RELEASED = "released", _("Released at shutdown")


class TaskAttempt(models.Model):
    """One attempt that did not succeed; a success is recorded on the task itself."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField(_("attempt"))
    worker_id = models.CharField(_("worker"), max_length=255, blank=True, default="")
    outcome = models.CharField(_("outcome"), max_length=16, choices=AttemptOutcome.choices)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), db_default=Now())
    error_type = models.CharField(_("error type"), max_length=255, blank=True, default="")
    error = models.TextField(_("error"), blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")

    class Meta:
        verbose_name = _("task attempt")
        verbose_name_plural = _("task attempts")
        ordering = ("task", "number", "id")
        indexes = [models.Index(fields=["task", "number"], name="taskqueue_attempt_task_idx")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.task_id}: {self.outcome}"

    def as_history_entry(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "outcome": self.outcome,
            "worker": self.worker_id,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error_type": self.error_type,
            "error": self.error,
            "traceback": self.traceback,
        }


class DeadLetter(models.Model):
    """A task that ran out of attempts or failed permanently, kept for triage."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="dead_letters")
    task_type = models.CharField(_("task type"), max_length=200)
    queue = models.CharField(_("queue"), max_length=100, default="default")
    error_type = models.CharField(_("error type"), max_length=255, blank=True, default="")
    error = models.TextField(_("error"), blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    attempts_history = models.JSONField(_("attempts history"), default=list, blank=True)
    failed_at = models.DateTimeField(_("failed at"), db_default=Now())
    reviewed = models.BooleanField(_("reviewed"), default=False)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("reviewed by"),
    )
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    note = models.TextField(_("note"), blank=True, default="")
    # Set when the task is retried from the dead-letter state; the row stays as history.
    resolved_at = models.DateTimeField(_("resolved at"), null=True, blank=True)

    class Meta:
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")
        ordering = ("-failed_at",)
        indexes = [
            models.Index(fields=["reviewed", "failed_at"], name="taskqueue_dead_reviewed_idx"),
            models.Index(fields=["task_type", "error_type"], name="taskqueue_dead_group_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_type} {self.task_id}: {self.error_type or self.error[:60]}"


class Workflow(models.Model):
    """Tasks enqueued together by ``chain``/``group``: shown and cancelled as one unit."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(_("name"), max_length=200, blank=True, default="")
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("created by"),
    )

    class Meta:
        verbose_name = _("workflow")
        verbose_name_plural = _("workflows")
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.name or str(self.id)
