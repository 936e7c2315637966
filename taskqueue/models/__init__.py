"""Queue data: tasks, their attempts and dead letters, task types, workers, schedules and
monitoring rows.

Read-only query helpers live here; every change of a queue row goes through
``taskqueue.store``. Every public name is importable from ``taskqueue.models``.
"""

from taskqueue.models.dashboard import Dashboard
from taskqueue.models.scheduling import CatchUp, Schedule, ScheduleSource
from taskqueue.models.task_types import CircuitState, Queue, TaskType
from taskqueue.models.tasks import (
    FINISHED_STATES,
    READY_STATES,
    UNFINISHED_STATES,
    AttemptOutcome,
    DeadLetter,
    Task,
    TaskAttempt,
    TaskDependency,
    TaskQuerySet,
    TaskStatus,
    Workflow,
)
from taskqueue.models.telemetry import AlertState, EventRecord, MetricsMinute, MetricsTotal
from taskqueue.models.workers import Worker, WorkerStatus

__all__ = [
    "FINISHED_STATES",
    "READY_STATES",
    "UNFINISHED_STATES",
    "AlertState",
    "AttemptOutcome",
    "CatchUp",
    "CircuitState",
    "Dashboard",
    "DeadLetter",
    "EventRecord",
    "MetricsMinute",
    "MetricsTotal",
    "Queue",
    "Schedule",
    "ScheduleSource",
    "Task",
    "TaskAttempt",
    "TaskDependency",
    "TaskQuerySet",
    "TaskStatus",
    "TaskType",
    "Worker",
    "WorkerStatus",
    "Workflow",
]
