"""``manage.py taskqueue_health``: the health verdict; exit 0 healthy, 1 degraded, 2 unhealthy."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskqueue.monitoring import health


class Command(BaseCommand):
    help = (
        "Print the task queue's health (healthy, degraded or unhealthy) and the reasons. "
        "Exit status: 0 healthy, 1 degraded, 2 unhealthy."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the verdict as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        verdict = health.check()
        if options["json"]:
            self.stdout.write(json.dumps(verdict.as_dict(), indent=2, default=str))
        else:
            style = {
                health.HEALTHY: self.style.SUCCESS,
                health.DEGRADED: self.style.WARNING,
                health.UNHEALTHY: self.style.ERROR,
            }[verdict.status]
            self.stdout.write(style(verdict.status))
            for issue in verdict.issues:
                self.stdout.write(f"  [{issue.severity}] {issue.code}: {issue.message}")
        if verdict.exit_code:
            # Not CommandError: its exit status is always 1, and "unhealthy" must differ.
            raise SystemExit(verdict.exit_code)
