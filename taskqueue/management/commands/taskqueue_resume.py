"""``manage.py taskqueue_resume TYPE [TYPE...]``: let workers claim these paused types again."""

from __future__ import annotations

from taskqueue import store
from taskqueue.management.commands.taskqueue_pause import TaskTypesCommand


class Command(TaskTypesCommand):
    help = "Resume paused task types: workers claim their waiting tasks again."
    verb = staticmethod(store.resume_task_types)
    done = "Resumed"
    unchanged = "not paused"
