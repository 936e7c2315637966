"""``manage.py taskqueue_resume TYPE [TYPE...]``: let workers claim these paused types again."""

from __future__ import annotations

from taskqueue.management.commands.taskqueue_pause import TaskTypesCommand
from taskqueue.store import flow


class Command(TaskTypesCommand):
    help = "Resume paused task types: workers claim their waiting tasks again."
    verb = staticmethod(flow.resume_task_types)
    done = "Resumed"
    unchanged = "not paused"
