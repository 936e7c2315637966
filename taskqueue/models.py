"""Queue data: tasks, their attempts and dead letters, task types and workers.

Read-only query helpers live here; every change of a task's state goes through
``taskqueue.store``.
"""

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
