"""``manage.py taskqueue_pause TYPE [TYPE...]``: stop workers claiming tasks of these types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskqueue import store
from taskqueue.core.registry import registry


class TaskTypesCommand(BaseCommand):
    """Apply one flow verb to the task types named on the command line."""

    verb: Callable[[list[str]], list[str]]
    done: str  # "Paused"
    unchanged: str  # "already paused"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_types", nargs="+", metavar="TYPE", help="Task type names.")

    def handle(self, *args: Any, task_types: list[str], **options: Any) -> None:
        names = list(dict.fromkeys(task_types))
        unknown = store.ensure_task_types(names)
        if unknown:
            known = ", ".join(registry.names()) or "none"
            raise CommandError(
                f"unknown task type(s): {', '.join(unknown)} "
                f"(no handler is registered and no worker has served it; registered: {known})"
            )
        changed = self.verb(names)
        if changed:
            self.stdout.write(self.style.SUCCESS(f"{self.done}: {', '.join(changed)}."))
        unchanged = [name for name in names if name not in changed]
        if unchanged:
            self.stdout.write(f"Left alone, {self.unchanged}: {', '.join(unchanged)}.")


class Command(TaskTypesCommand):
    help = (
        "Pause task types: workers claim none of their tasks until resumed. Tasks already "
        "claimed finish; paused tasks wait without spending attempts."
    )
    verb = staticmethod(store.pause_task_types)
    done = "Paused"
    unchanged = "already paused"
