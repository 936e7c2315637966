"""``manage.py run_worker``: run one worker process."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskqueue.checks.messages import QUEUE_NOT_SERVED
from taskqueue.checks.queues import unserved_queues_line
from taskqueue.conf import settings as tq_settings
from taskqueue.core.registry import QUEUE_PATTERN, registry
from taskqueue.worker.loop import POOLS, WorkerConfig, WorkerLoop
from taskqueue.worker.presence import default_worker_id


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(value)
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Run a taskqueue worker: claim due tasks and run their handlers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues", help="Comma-separated queues (default: TASKQUEUE['QUEUES'])."
        )
        parser.add_argument(
            "--concurrency",
            type=_positive_int,
            help="Handlers at once (default: TASKQUEUE['CONCURRENCY']).",
        )
        parser.add_argument("--id", dest="worker_id", help="Worker id (default: host:pid:random).")
        parser.add_argument(
            "--max-memory",
            type=_positive_float,
            metavar="MIB",
            help="Recycle a handler process (or the worker) holding more than this many MiB "
            "(default: TASKQUEUE['MAX_MEMORY'], no ceiling).",
        )
        parser.add_argument(
            "--pool",
            choices=POOLS,
            help="Run handlers in child processes (stoppable at their timeout) or in threads "
            "(lighter; only async handlers are stopped) (default: TASKQUEUE['POOL']).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Process what is due now, then exit."
        )
        parser.add_argument(
            "--max-tasks",
            type=_positive_int,
            help="Exit after claiming this many tasks (a supervisor restarts it).",
        )
        parser.add_argument(
            "--poll-interval",
            type=_non_negative_float,
            help="Seconds between polls (default: TASKQUEUE['POLL_INTERVAL']).",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=_non_negative_float,
            help="Seconds running tasks get to finish on SIGTERM "
            "(default: TASKQUEUE['SHUTDOWN_TIMEOUT']).",
        )

    def check(self, *args: Any, **kwargs: Any) -> None:
        """Run the system checks, less W003: this worker says itself which queues it leaves."""
        # W003 judges TASKQUEUE['QUEUES'] alone; with --queues it would contradict the queues
        # this worker serves, and without it repeat the start-up warning below.
        silenced = django_settings.SILENCED_SYSTEM_CHECKS
        django_settings.SILENCED_SYSTEM_CHECKS = [*silenced, QUEUE_NOT_SERVED]
        try:
            super().check(*args, **kwargs)
        finally:
            django_settings.SILENCED_SYSTEM_CHECKS = silenced

    def handle(self, *args: Any, **options: Any) -> None:
        queues = (
            [q.strip() for q in options["queues"].split(",") if q.strip()]
            if options["queues"]
            else list(tq_settings.QUEUES)
        )
        bad = [q for q in queues if not QUEUE_PATTERN.fullmatch(q)]
        if not queues or bad:
            raise CommandError(f"invalid --queues {options['queues']!r}: {bad or 'empty'}")
        poll_interval = (
            options["poll_interval"]
            if options["poll_interval"] is not None
            else float(tq_settings.POLL_INTERVAL)
        )
        if poll_interval <= 0:
            raise CommandError("--poll-interval must be greater than 0")
        config = WorkerConfig(
            worker_id=options["worker_id"] or default_worker_id(),
            queues=queues,
            concurrency=options["concurrency"] or int(tq_settings.CONCURRENCY),
            poll_interval=poll_interval,
            shutdown_timeout=(
                options["shutdown_timeout"]
                if options["shutdown_timeout"] is not None
                else float(tq_settings.SHUTDOWN_TIMEOUT)
            ),
            heartbeat_interval=float(tq_settings.HEARTBEAT_INTERVAL),
            rescue_interval=float(tq_settings.RESCUE_INTERVAL),
            stale_after=float(tq_settings.STALE_AFTER),
            cancel_grace=float(tq_settings.CANCEL_GRACE),
            burst=options["burst"],
            max_tasks=options["max_tasks"],
            pool=options["pool"] or tq_settings.POOL,
            max_memory=(
                options["max_memory"]
                if options["max_memory"] is not None
                else tq_settings.MAX_MEMORY
            ),
        )
        self._configure_logging(options["verbosity"])
        unserved = unserved_queues_line(queues)
        if unserved:
            logging.getLogger("taskqueue.worker").warning(unserved)
        if not registry.names():
            self.stderr.write(
                "No task handlers are registered: add @taskqueue.handler functions to a "
                "tasks.py module of an installed app."
            )
        exit_code = WorkerLoop(config).run()
        sys.stdout.flush()
        if exit_code:
            raise SystemExit(exit_code)

    def _configure_logging(self, verbosity: int) -> None:
        # Only when the project configured nothing for us: then show the worker's own lines.
        logger = logging.getLogger("taskqueue")
        if logger.handlers or logging.getLogger().handlers:
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
