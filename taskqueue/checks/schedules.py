"""E004: schedules declared in settings or code that workers could not run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage

from taskqueue.checks.messages import SCHEDULE, clipped, error, shown
from taskqueue.checks.rules import sorted_keys
from taskqueue.schedules.cron import FIELDS_HINT
from taskqueue.schedules.declarations import (
    declarations,
    declared_schedules,
    settings_declarations,
)
from taskqueue.schedules.definitions import ScheduleDeclaration

WHERE = "TASKQUEUE['SCHEDULES']"


def declared_with_problems(
    schedules: Any,
) -> tuple[list[ScheduleDeclaration], list[tuple[Any, str]]]:
    """Every valid declaration and the (name, problem) pairs, whatever ``schedules`` holds."""
    try:
        return declared_schedules(schedules, check_tasks=True)
    except Exception:  # a value the shared parser cannot even describe: find it entry by entry
        return _one_by_one(schedules)


def _one_by_one(schedules: Any) -> tuple[list[ScheduleDeclaration], list[tuple[Any, str]]]:
    valid: list[ScheduleDeclaration] = []
    problems: list[tuple[Any, str]] = []
    try:
        valid += declarations.code(problems)
    except Exception as exc:  # a built-in reading junk settings (RETENTION reports it)
        problems.append((None, f"could not be read ({type(exc).__name__})"))
    entries = schedules if isinstance(schedules, Mapping) else {}
    code_names = {declared.name for declared in valid}
    for name in sorted_keys(entries):
        try:
            found, entry_problems = settings_declarations({name: entries[name]}, check_tasks=True)
        except Exception as exc:  # e.g. a number too large to print or convert
            entry_problems = [
                (
                    name,
                    f"could not be checked ({type(exc).__name__}): use plain "
                    "strings, numbers, booleans and dicts",
                )
            ]
            found = []
        problems += entry_problems
        for declared in found:
            if declared.name in code_names:
                problems.append((declared.name, "is also declared in code: rename one of them"))
            else:
                valid.append(declared)
    return valid, problems


def check_schedules(schedules: Any) -> list[CheckMessage]:
    """Every settings schedule is valid and names a registered task; @periodic is bound."""
    messages: list[CheckMessage] = []
    in_settings = schedules if isinstance(schedules, Mapping) else {}
    for name, problem in declared_with_problems(schedules)[1]:
        if name in in_settings:
            where = f"{WHERE}[{shown(name)}]"
        elif name is None:
            where = "taskqueue's built-in schedules (see the RETENTION errors)"
        elif not name:
            where = WHERE
        else:
            where = f"Schedule {shown(name)}"
        messages.append(
            error(
                SCHEDULE,
                f"{where} {clipped(problem)}.",
                hint=FIELDS_HINT if "cron" in problem else None,
            )
        )
    for func in declarations.pending():
        where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
        messages.append(
            error(
                SCHEDULE,
                f"{where} has @taskqueue.periodic but is not registered as a handler.",
                hint="Add @taskqueue.handler(...) to it, or register it with taskqueue.register().",
            )
        )
    return messages
