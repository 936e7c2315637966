"""taskqueue: a reliable background task queue in your Django project's own database.

The public API. Importing this package is safe before Django's app registry is ready (it is
imported from ``INSTALLED_APPS``); the functions that touch the database load their modules
on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskqueue.context import TaskContext
from taskqueue.core.registry import CircuitBreaker
from taskqueue.core.retry import Exponential, Fixed, Linear, NoRetry, RetryStrategy
from taskqueue.exceptions import (
    InvalidPayload,
    InvalidTaskOption,
    PayloadTooLarge,
    PermanentError,
    Retry,
    TaskqueueError,
    UnknownTaskType,
)
from taskqueue.handlers import TaskHandler, handler, register
from taskqueue.schedules.declarations import periodic
from taskqueue.version import __version__ as __version__
from taskqueue.workflows import chain, group, step

if TYPE_CHECKING:
    from taskqueue.store import cancel, enqueue, enqueue_many

_LAZY: dict[str, str] = {
    "enqueue": "taskqueue.store",
    "enqueue_many": "taskqueue.store",
    "cancel": "taskqueue.store",
}


def __getattr__(name: str) -> Callable[..., Any]:
    # The store imports models, which needs the app registry: load it on first use.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taskqueue' has no attribute {name!r}")


__all__ = [
    "CircuitBreaker",
    "Exponential",
    "Fixed",
    "InvalidPayload",
    "InvalidTaskOption",
    "Linear",
    "NoRetry",
    "PayloadTooLarge",
    "PermanentError",
    "Retry",
    "RetryStrategy",
    "TaskContext",
    "TaskHandler",
    "TaskqueueError",
    "UnknownTaskType",
    "cancel",
    "chain",
    "enqueue",
    "enqueue_many",
    "group",
    "handler",
    "periodic",
    "register",
    "step",
]
