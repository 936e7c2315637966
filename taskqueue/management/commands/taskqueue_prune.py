"""``manage.py taskqueue_prune``: apply TASKQUEUE['RETENTION'] now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskqueue.builtins.prune import KIND_LABELS, prune


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Delete finished tasks, reviewed dead letters, empty workflows and old worker rows "
        "older than TASKQUEUE['RETENTION'] allows, in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Delete nothing; print how many rows of each kind would go.",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            help="Rows deleted per transaction (default: TASKQUEUE['RETENTION']['batch_size']).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]
        # Run to the end: someone at a shell wants it all gone, and each batch is still its
        # own short transaction.
        result = prune(batch_size=options["batch_size"], dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        width = max(len(label) for label in KIND_LABELS.values())
        for kind, count in result.counts.items():
            note = "  (kept forever)" if kind in result.kept_forever else ""
            self.stdout.write(f"{KIND_LABELS[kind]:<{width}}  {count}{note}")
        self.stdout.write(f"{verb} {result.total} row(s) in all.")
