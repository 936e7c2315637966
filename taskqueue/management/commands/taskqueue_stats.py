"""``manage.py taskqueue_stats``: the stats view's figures as tables (or ``--json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskqueue.monitoring import stats
from taskqueue.monitoring.queries import ALL_STATUSES


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[index]) for row in cells)])
        for index, header in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[index], int | float) or row[index] is None for row in rows)
        for index in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(list(headers)), line(["-" * width for width in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


class Command(BaseCommand):
    help = "Print the task queue's stats: counts, queues, task types, workers, circuits."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the stats as JSON.")
        parser.add_argument(
            "--window",
            default=stats.DEFAULT_WINDOW,
            help=f"Seconds of history for rates and percentiles ({stats.MIN_WINDOW} to "
            f"{stats.MAX_WINDOW}; default {stats.DEFAULT_WINDOW}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            window = stats.parse_window(options["window"])
        except stats.StatsError as exc:
            raise CommandError(str(exc)) from None
        data = stats.collect(window)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        self.stdout.write("\n\n".join(self.sections(data)))

    def sections(self, data: dict[str, Any]) -> list[str]:
        counts = data["counts"]
        out = [
            f"Task queue stats at {data['generated_at']} (window {data['window']} s)",
            table(
                ["total", *ALL_STATUSES, "due", "oldest pending (s)"],
                [
                    [
                        counts["total"],
                        *(counts[s] for s in ALL_STATUSES),
                        data["due"],
                        data["oldest_pending_age"],
                    ]
                ],
            ),
        ]
        outcomes = data["window_outcomes"]
        out.append(
            "Throughput: "
            f"{data['throughput']['completed_last_hour']:,} completed in the last hour; "
            f"in the window {outcomes['succeeded']:,} succeeded, {outcomes['failed']:,} "
            f"failed attempts ({_percent(outcomes['failure_rate'])}), "
            f"{outcomes['retried']:,} retries ({_percent(outcomes['retry_rate'])}), "
            f"{outcomes['dead_lettered']:,} dead-lettered. "
            f"Unreviewed dead letters: {data['dead_letters']['unreviewed']:,}."
        )
        statuses = ("pending", "scheduled", "waiting", "running", "retrying")
        out.append(
            "Queues\n"
            + table(
                ["queue", *statuses, "due", "oldest (s)", "failure", "retry"],
                [
                    [
                        queue,
                        *(entry[s] for s in statuses),
                        entry["due"],
                        entry["oldest_pending_age"],
                        _percent(entry["window"]["failure_rate"]),
                        _percent(entry["window"]["retry_rate"]),
                    ]
                    for queue, entry in data["by_queue"].items()
                ],
            )
        )
        out.append(
            "Task types\n"
            + table(
                [
                    "type",
                    "pending",
                    "running",
                    "due",
                    "oldest (s)",
                    "ok",
                    "failure",
                    "retry",
                    "wait p50/p95/p99 (s)",
                    "run p50/p95/p99 (s)",
                ],
                [
                    [
                        name,
                        entry["pending"],
                        entry["running"],
                        entry["due"],
                        entry["oldest_pending_age"],
                        entry["window"]["succeeded"],
                        _percent(entry["window"]["failure_rate"]),
                        _percent(entry["window"]["retry_rate"]),
                        _triple(entry["wait_time"]),
                        _triple(entry["run_time"]),
                    ]
                    for name, entry in data["by_type"].items()
                ],
            )
        )
        workers = data["workers"]["list"]
        out.append(
            f"Live workers: {len(workers)}\n"
            + table(
                ["id", "host", "pid", "queues", "concurrency", "in hand", "heartbeat age (s)"],
                [
                    [
                        w["id"],
                        w["host"],
                        w["pid"],
                        ",".join(w["queues"]),
                        w["concurrency"],
                        w["tasks_in_hand"],
                        w["heartbeat_age"],
                    ]
                    for w in workers
                ],
            )
        )
        if data["open_circuits"]:
            out.append(
                "Open circuits\n"
                + table(
                    ["type", "state", "opened at", "failures"],
                    [
                        [c["task_type"], c["state"], c["opened_at"], c["consecutive_failures"]]
                        for c in data["open_circuits"]
                    ],
                )
            )
        if data["late_schedules"]:
            out.append(
                "Late schedules\n"
                + table(
                    ["schedule", "type", "due at", "late by (s)"],
                    [
                        [s["name"], s["task_type"], s["due_at"], s["late_by"]]
                        for s in data["late_schedules"]
                    ],
                )
            )
        if data["approximate"]:
            out.append("Approximate:\n" + "\n".join(f"  - {note}" for note in data["approximate"]))
        return out


def _triple(timing: dict[str, Any]) -> str:
    values = [timing.get(name) for name in ("p50", "p95", "p99")]
    if all(value is None for value in values):
        return "-"
    return "/".join(_cell(value) for value in values)
