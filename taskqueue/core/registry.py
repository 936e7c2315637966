"""Handler specs and the registry that maps task types to them.

Workers dispatch only to handlers registered here; a task type named by a database row is
looked up in this dict, never imported.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from taskqueue.core.limits import check_max_attempts, check_timeout
from taskqueue.core.payloads import short_repr
from taskqueue.core.priorities import resolve_priority
from taskqueue.core.retry import RetryStrategy
from taskqueue.exceptions import InvalidTaskOption, UnknownTaskType

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
# A positive count per second, minute, hour or day ("0/m" would be a pause: use pause).
RATE_PATTERN = re.compile(r"^[1-9]\d*/(s|m|h|d)$")


def validate_queue_name(queue: Any) -> str:
    """Return ``queue`` if it is a valid queue name, else raise ``InvalidTaskOption``."""
    # fullmatch: with match, "$" would let a trailing newline through.
    if not isinstance(queue, str) or not QUEUE_PATTERN.fullmatch(queue):
        raise InvalidTaskOption(
            f"invalid queue name {short_repr(queue)}: use 1 to 100 letters, digits, '_', '.' or '-'"
        )
    return queue


def validate_max_attempts(value: Any) -> int:
    """Return ``value`` if it is a whole number of attempts from 1 to 1000."""
    return check_max_attempts(value)


def validate_timeout(value: Any) -> float:
    """Return ``value`` as float seconds if it is finite, positive and at most 10 years."""
    return check_timeout(value)


@dataclass(frozen=True)
class CircuitBreaker:
    """Hold a task type back for ``cooldown`` seconds after ``failures`` failures in a row."""

    failures: int = 5
    cooldown: float = 60.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.failures, bool)
            or not isinstance(self.failures, int)
            or self.failures < 1
        ):
            raise InvalidTaskOption(
                f"CircuitBreaker failures must be a positive integer, got {self.failures!r}"
            )
        if (
            isinstance(self.cooldown, bool)
            or not isinstance(self.cooldown, int | float)
            or not self.cooldown > 0
            or self.cooldown == float("inf")
        ):
            raise InvalidTaskOption(
                "CircuitBreaker cooldown must be a positive number of seconds, "
                f"got {self.cooldown!r}"
            )
        object.__setattr__(self, "cooldown", float(self.cooldown))


@dataclass(frozen=True)
class HandlerSpec:
    """Everything known about one task type: the function and its defaults."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    priority: int = 0
    max_attempts: int | None = None
    retry: RetryStrategy | None = None
    timeout: float | None = None
    rate_limit: str | None = None
    concurrency_limit: int | None = None
    circuit_breaker: CircuitBreaker | None = None
    critical: bool = False
    description: str = ""
    takes_context: bool = False
    # The handler's writes and the task's completion commit in one transaction on the
    # queue's database: effects exactly once, for handlers whose only effects are there.
    atomic: bool = False
    is_async: bool = False
    signature: inspect.Signature = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def bind_payload(self, payload: dict[str, Any], context: Any = None) -> inspect.BoundArguments:
        """Bind ``payload`` (and the context) to the handler, raising ``TypeError`` on mismatch."""
        if self.takes_context:
            return self.signature.bind(context, **payload)
        return self.signature.bind(**payload)


def build_spec(name: str, func: Callable[..., Any], **options: Any) -> HandlerSpec:
    """Validate handler options and return the spec; errors name the handler and the option."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ImproperlyConfigured(
            f"invalid task type name {name!r}: use 1 to 200 letters, digits, '_', '.', ':' or '-'"
        )
    if not callable(func):
        raise ImproperlyConfigured(f"handler for {name!r} is not callable: {func!r}")
    known = set(HandlerSpec.__dataclass_fields__) - {"name", "func", "is_async", "signature"}
    unknown = set(options) - known
    if unknown:
        raise ImproperlyConfigured(
            f"unknown option(s) for handler {name!r}: {', '.join(sorted(unknown))}"
        )
    try:
        if "queue" in options:
            validate_queue_name(options["queue"])
        if "priority" in options:
            options["priority"] = resolve_priority(options["priority"])
        if options.get("max_attempts") is not None:
            validate_max_attempts(options["max_attempts"])
        if options.get("timeout") is not None:
            options["timeout"] = validate_timeout(options["timeout"])
        retry = options.get("retry")
        if retry is not None and not isinstance(retry, RetryStrategy):
            raise InvalidTaskOption(
                "retry must be a strategy such as taskqueue.Exponential(), "
                f"taskqueue.Linear(), taskqueue.Fixed() or taskqueue.NoRetry(), got {retry!r}"
            )
        rate = options.get("rate_limit")
        if rate is not None and (not isinstance(rate, str) or not RATE_PATTERN.fullmatch(rate)):
            raise InvalidTaskOption(f"rate_limit must look like '100/m' or '5/s', got {rate!r}")
        limit = options.get("concurrency_limit")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise InvalidTaskOption(f"concurrency_limit must be a positive integer, got {limit!r}")
        breaker = options.get("circuit_breaker")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise InvalidTaskOption(
                "circuit_breaker must be taskqueue.CircuitBreaker(failures=..., cooldown=...), "
                f"got {breaker!r}"
            )
    except InvalidTaskOption as exc:
        raise ImproperlyConfigured(f"handler {name!r}: {exc}") from None
    if options.get("atomic") and inspect.iscoroutinefunction(func):
        raise ImproperlyConfigured(
            f"handler {name!r} is async and atomic=True: an async handler's queries do not "
            "run in the worker's transaction, so atomic mode cannot cover them"
        )
    signature = inspect.signature(func)
    takes_context = bool(options.get("takes_context", False))
    if takes_context and not signature.parameters:
        raise ImproperlyConfigured(
            f"handler {name!r} has takes_context=True but accepts no context argument"
        )
    return HandlerSpec(
        name=name,
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        signature=signature,
        **options,
    )


class Registry:
    """Task type name to ``HandlerSpec``; a duplicate name is a configuration error."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        self._lock = threading.Lock()

    def add(self, spec: HandlerSpec) -> HandlerSpec:
        with self._lock:
            existing = self._specs.get(spec.name)
            if existing is not None and not _same_function(existing.func, spec.func):
                raise ImproperlyConfigured(
                    f"task type {spec.name!r} is registered twice: by "
                    f"{_describe(existing.func)} and by {_describe(spec.func)}"
                )
            self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> HandlerSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTaskType(f"no handler is registered for task type {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[HandlerSpec]:
        return [self._specs[name] for name in self.names()]

    @contextmanager
    def override(self, *specs: HandlerSpec, keep_existing: bool = True) -> Iterator[Registry]:
        """Temporarily add handlers (tests); restores the previous registry on exit."""
        saved = dict(self._specs)
        if not keep_existing:
            self._specs.clear()
        try:
            for spec in specs:
                self._specs[spec.name] = spec
            yield self
        finally:
            self._specs = saved


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """A module imported twice (reload) re-registers the same function: not a duplicate."""
    if a is b:
        return True
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


registry = Registry()
