"""Schedules declared in code (``@taskqueue.periodic``, built-ins) and in settings.

Declarations are validated where they are written: the decorator raises at import time,
settings are reported by ``manage.py check`` (taskqueue.E004), the admin form says what is
wrong with a field. Workers copy the declarations into the ``Schedule`` table at start
(``taskqueue.schedules.sync``). Nothing here touches the database, so it is safe to import
before the app registry is ready.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from taskqueue.core.registry import HandlerSpec, registry
from taskqueue.schedules.definitions import (
    PENDING_ATTRIBUTE,
    SETTINGS_KEYS,
    SOURCE_CODE,
    SOURCE_SETTINGS,
    ScheduleDeclaration,
    ScheduleDefinitionError,
    declaration,
    validate_name,
    validate_payload_for_task,
)

if TYPE_CHECKING:
    from taskqueue.handlers import TaskHandler

# --- the declarations this process knows ----------------------------------------------------


class Declarations:
    """Schedules declared in code: by ``@periodic`` and by taskqueue's built-ins."""

    def __init__(self) -> None:
        self._code: dict[str, ScheduleDeclaration] = {}
        # Functions decorated with @periodic before @handler named their task type.
        self._pending: list[Callable[..., Any]] = []
        self._builtins: dict[str, Callable[[], ScheduleDeclaration | None]] = {}
        self._lock = threading.RLock()

    def add(self, declared: ScheduleDeclaration) -> None:
        with self._lock:
            existing = self._code.get(declared.name)
            if existing is not None and existing != declared:
                raise ImproperlyConfigured(
                    f"schedule name {declared.name!r} is declared twice: by {existing.origin} "
                    f"and by {declared.origin}; give one a different name= in @taskqueue.periodic"
                )
            self._code[declared.name] = declared

    def add_pending(self, func: Callable[..., Any]) -> None:
        with self._lock:
            if func not in self._pending:
                self._pending.append(func)

    def bind_pending(self, func: Callable[..., Any], task: str) -> None:
        """``func`` became the handler of ``task``: declare the schedules it waits to name."""
        options_list = getattr(func, PENDING_ATTRIBUTE, None)
        if not options_list:
            return
        with self._lock:
            for options in options_list:
                self.add(_bind(options, task))
            if func in self._pending:
                self._pending.remove(func)

    def pending(self) -> list[Callable[..., Any]]:
        with self._lock:
            return list(self._pending)

    def add_builtin(self, name: str, factory: Callable[[], ScheduleDeclaration | None]) -> None:
        with self._lock:
            self._builtins[name] = factory

    def code(self, problems: list[tuple[str, str]] | None = None) -> list[ScheduleDeclaration]:
        """Every code declaration, built-ins evaluated now (they read settings).

        A built-in whose settings are invalid is left out, and its problem appended to
        ``problems`` (raised when no list is given).
        """
        with self._lock:
            declared = dict(self._code)
            builtins = dict(self._builtins)
        for name, factory in builtins.items():
            try:
                built = factory()
            except ImproperlyConfigured as exc:
                if problems is None:
                    raise
                problems.append((name, f"is invalid: {exc}"))
                continue
            if built is not None and name not in declared:
                declared[name] = built
        return [declared[name] for name in sorted(declared)]

    @contextmanager
    def override(self, keep_existing: bool = False) -> Iterator[Declarations]:
        """Temporarily start from no declarations (tests); restores them on exit."""
        with self._lock:
            saved = (dict(self._code), list(self._pending), dict(self._builtins))
            if not keep_existing:
                self._code.clear()
                self._pending.clear()
                self._builtins.clear()
        try:
            yield self
        finally:
            with self._lock:
                self._code, self._pending, self._builtins = (
                    saved[0],
                    saved[1],
                    saved[2],
                )


declarations = Declarations()


def _bind(options: dict[str, Any], task: str) -> ScheduleDeclaration:
    declared = replace(options["declaration"], task=task, name=options["name"] or task)
    try:
        validate_name(declared.name)
        validate_payload_for_task(task, declared.payload)
    except ScheduleDefinitionError as exc:
        raise ImproperlyConfigured(f"{options['where']}: {exc}") from None
    return declared


def _registered_spec(target: Any) -> HandlerSpec | None:
    """The spec of a handler already registered (a ``TaskHandler``), None for a function.

    Read from the ``spec`` attribute: ``taskqueue.handlers`` imports this module (``register``
    binds the schedules declared below ``@handler``), so this one cannot import it back.
    """
    spec = getattr(target, "spec", None)
    return spec if isinstance(spec, HandlerSpec) else None


def periodic(
    cron: str,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    payload: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: str | int | None = None,
    catch_up: str = "once",
    grace: float | None = None,
    heartbeat_url: str = "",
    description: str = "",
) -> Callable[[Any], Any]:
    """Run a handler on a cron schedule; place it above or below ``@taskqueue.handler``.

    ``name`` defaults to the task type. Each slot fires once however many workers run.
    """
    if callable(cron):
        raise TypeError("use @taskqueue.periodic('<cron expression>', ...) with parentheses")
    where = f"@taskqueue.periodic({cron!r}" + (f", name={name!r})" if name else ")")
    try:
        # The task type is not known yet when this sits below @handler: bound later.
        template = declaration(
            name or "pending",
            "pending",
            cron,
            timezone=timezone,
            payload=payload,
            queue=queue,
            priority=priority,
            catch_up=catch_up,
            grace=grace,
            heartbeat_url=heartbeat_url,
            description=description,
            source=SOURCE_CODE,
        )
    except ScheduleDefinitionError as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None

    def decorate(target: Any) -> Any:
        spec = _registered_spec(target)
        func = spec.func if spec is not None else target
        if not callable(func):
            raise TypeError(f"{where} decorates a handler function, not {target!r}")
        origin = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
        options = {
            "declaration": replace(template, origin=origin),
            "name": name,
            "where": f"{where} on {origin}",
        }
        if spec is not None:
            declarations.add(_bind(options, spec.name))
            return target
        pending = getattr(func, PENDING_ATTRIBUTE, None)
        if pending is None:
            pending = []
            setattr(func, PENDING_ATTRIBUTE, pending)
        pending.append(options)
        declarations.add_pending(func)
        return target

    return decorate


def bind_handler(handler: TaskHandler) -> None:
    """Hook for ``taskqueue.register``: declare the schedules placed below ``@handler``."""
    declarations.bind_pending(handler.spec.func, handler.spec.name)


def declare_builtin(
    name: str, task: str, cron: str | Callable[[], str | None], **options: Any
) -> None:
    """Declare a schedule that taskqueue itself runs (such as retention's pruning).

    ``cron`` may be a callable read at each sync (so it can come from settings); when it
    returns None the schedule is not declared, and sync removes it.
    """

    def build() -> ScheduleDeclaration | None:
        expression = cron() if callable(cron) else cron
        if expression is None:
            return None
        try:
            return declaration(
                name, task, expression, source=SOURCE_CODE, origin=f"built-in {name!r}", **options
            )
        except ScheduleDefinitionError as exc:
            raise ImproperlyConfigured(f"built-in schedule {name!r}: {exc}") from None

    declarations.add_builtin(name, build)


# --- settings -------------------------------------------------------------------------------


def settings_declarations(
    raw: Any, *, check_tasks: bool = True
) -> tuple[list[ScheduleDeclaration], list[tuple[str, str]]]:
    """Parse ``TASKQUEUE['SCHEDULES']``: the valid declarations and (name, problem) pairs."""
    if not isinstance(raw, Mapping):
        return [], [("", f"must be a dict of name to schedule, got {type(raw).__name__}")]
    valid: list[ScheduleDeclaration] = []
    problems: list[tuple[str, str]] = []
    for name, entry in raw.items():
        if not isinstance(entry, Mapping):
            problems.append((name, f"must be a dict with 'task' and 'cron', got {entry!r}"))
            continue
        unknown = sorted(set(entry) - SETTINGS_KEYS)
        missing = [key for key in ("task", "cron") if key not in entry]
        if unknown:
            problems.append(
                (
                    name,
                    f"has unknown key(s) {', '.join(map(repr, unknown))}; "
                    f"known keys: {', '.join(sorted(SETTINGS_KEYS))}",
                )
            )
            continue
        if missing:
            problems.append(
                (
                    name,
                    "must be a dict with 'task' and 'cron' "
                    f"(missing {' and '.join(map(repr, missing))})",
                )
            )
            continue
        options = {key: value for key, value in entry.items() if key not in ("task", "cron")}
        try:
            declared = declaration(
                name,
                entry["task"],
                entry["cron"],
                source=SOURCE_SETTINGS,
                origin=f"TASKQUEUE['SCHEDULES'][{name!r}]",
                **options,
            )
            validate_payload_for_task(declared.task, declared.payload)
        except ScheduleDefinitionError as exc:
            problems.append((name, f"is invalid: {exc}"))
            continue
        if check_tasks and declared.task not in registry:
            problems.append(
                (
                    name,
                    f"names task {declared.task!r}, which has no registered handler "
                    f"(registered: {', '.join(registry.names()) or 'none'})",
                )
            )
            continue
        valid.append(declared)
    return valid, problems


def declared_schedules(
    raw_settings: Any, *, check_tasks: bool = False
) -> tuple[list[ScheduleDeclaration], list[tuple[str, str]]]:
    """Every declared schedule (code first, then settings) and the problems found."""
    problems: list[tuple[str, str]] = []
    code = declarations.code(problems)
    from_settings, settings_problems = settings_declarations(raw_settings, check_tasks=check_tasks)
    problems += settings_problems
    by_name = {declared.name: declared for declared in code}
    for declared in from_settings:
        if declared.name in by_name:
            problems.append(
                (
                    declared.name,
                    f"is also declared in code by {by_name[declared.name].origin}: "
                    "rename one of them",
                )
            )
            continue
        by_name[declared.name] = declared
    return [by_name[name] for name in sorted(by_name)], problems
