"""``@taskqueue.handler`` and ``taskqueue.register``: how task types come to exist."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from taskqueue.core.registry import HandlerSpec, build_spec, registry
from taskqueue.core.steps import Step
from taskqueue.schedules.declarations import bind_handler

if TYPE_CHECKING:
    from taskqueue.models import Task


class TaskHandler:
    """A registered handler: call it like the function, or ``.enqueue(**payload)`` it."""

    def __init__(self, spec: HandlerSpec) -> None:
        self.spec = spec
        functools.update_wrapper(self, spec.func)

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.func(*args, **kwargs)

    def enqueue(self, _options: Mapping[str, Any] | None = None, /, **payload: Any) -> Task:
        """Enqueue with ``payload`` as keyword arguments; options go in a leading dict."""
        # The store imports models; handlers are declared before the app registry is ready.
        from taskqueue.store import enqueue

        return enqueue(self.spec.name, payload, **dict(_options or {}))

    def step(self, _options: Mapping[str, Any] | None = None, /, **payload: Any) -> Step:
        """A workflow step of this type for ``taskqueue.chain``/``group``; options as in
        ``enqueue``."""
        return Step(self.spec.name, payload, dict(_options or {}))

    def enqueue_many(self, payloads: Iterable[Mapping[str, Any]], **options: Any) -> list[Task]:
        """Enqueue one task of this type per payload, in one transaction."""
        # The store imports models; handlers are declared before the app registry is ready.
        from taskqueue.store import enqueue_many

        return enqueue_many(((self.spec.name, payload) for payload in payloads), **options)

    def __repr__(self) -> str:
        return f"<TaskHandler {self.spec.name!r}>"


def register(name: str, func: Callable[..., Any], **options: Any) -> TaskHandler:
    """Register ``func`` as the handler of task type ``name`` (for ``AppConfig.ready()``)."""
    if isinstance(func, TaskHandler):
        func = func.spec.func
    registered = TaskHandler(registry.add(build_spec(name, func, **options)))
    # @taskqueue.periodic placed below @handler could not name the task type until now.
    bind_handler(registered)
    return registered


def handler(name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], TaskHandler]:
    """Decorate a function to handle task type ``name`` (default: ``module.function``)."""
    if callable(name):
        raise TypeError(
            "use @taskqueue.handler('type-name', ...) with parentheses and a task type name"
        )

    def decorate(func: Callable[..., Any]) -> TaskHandler:
        if name is None and "<locals>" in func.__qualname__:
            raise ImproperlyConfigured(
                f"{func.__qualname__} is defined inside a function, so it has no stable "
                "default task type name: pass one, @taskqueue.handler('my-task', ...)"
            )
        task_type = name or f"{func.__module__}.{func.__qualname__}"
        return register(task_type, func, **options)

    return decorate
