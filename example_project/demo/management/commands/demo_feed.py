"""``manage.py demo_feed``: give the demo something to do.

Without ``--loop``: enqueue the first batch (including one task that retries and one that
dead-letters). With ``--loop SECONDS``: skip that batch and enqueue a few small tasks every
SECONDS until Ctrl-C or SIGTERM. ``--create-admin`` first creates the superuser admin/admin.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections import Counter
from types import FrameType
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, close_old_connections

from example_project.demo.batches import enqueue_first_batch, enqueue_stream_tick

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # a local demo account, documented in the README
REPORT_EVERY = 60.0  # seconds between the loop's progress lines


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{count} {task_type}" for task_type, count in sorted(counts.items()))


class Command(BaseCommand):
    help = (
        "Feed the taskqueue demo: create the admin user, enqueue a first batch, or keep "
        "enqueueing a few tasks every --loop SECONDS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--create-admin",
            action="store_true",
            help=f"Create the superuser {ADMIN_USERNAME!r} (password {ADMIN_PASSWORD!r}) "
            "if it does not exist.",
        )
        parser.add_argument(
            "--loop",
            type=_positive_seconds,
            metavar="SECONDS",
            help="Instead of the first batch, enqueue a few tasks every SECONDS until stopped.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["create_admin"]:
            self._create_admin()
        if options["loop"] is None:
            tasks = enqueue_first_batch()
            counts = Counter(task.task_type for task in tasks)
            self.stdout.write(f"demo_feed: enqueued {len(tasks)} tasks ({_summary(counts)})")
            return
        self._feed_forever(options["loop"], options["verbosity"])

    def _create_admin(self) -> None:
        users = get_user_model()
        if users.objects.filter(username=ADMIN_USERNAME).exists():
            self.stdout.write(f"demo_feed: superuser {ADMIN_USERNAME!r} already exists")
            return
        users.objects.create_superuser(
            ADMIN_USERNAME, f"{ADMIN_USERNAME}@example.com", ADMIN_PASSWORD
        )
        self.stdout.write(
            f"demo_feed: created superuser {ADMIN_USERNAME!r} (password {ADMIN_PASSWORD!r})"
        )

    def _feed_forever(self, seconds: float, verbosity: int) -> None:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        self.stdout.write(f"demo_feed: enqueueing a few tasks every {seconds:g} s")
        # One line a minute (every tick with -v 2), so the worker's own lines stay readable.
        ticks_per_report = 1 if verbosity > 1 else max(round(REPORT_EVERY / seconds), 1)
        enqueued: Counter[str] = Counter()
        for tick in itertools.count(1):
            try:
                enqueued.update(task.task_type for task in enqueue_stream_tick(tick))
                if tick % ticks_per_report == 0:
                    self.stdout.write(f"demo_feed: enqueued {_summary(enqueued)}")
                    enqueued.clear()
            except DatabaseError as exc:
                # A busy or restarting database: skip this tick, try again on the next one.
                self.stderr.write(f"demo_feed: could not enqueue ({exc}); trying again")
                close_old_connections()
            if stop.wait(seconds):
                break
        self.stdout.write("demo_feed: stopped")
