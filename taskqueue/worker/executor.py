"""One claimed task in, one outcome out.

The pipeline reads top to bottom: resolve the handler, check the payload, bind it, run the
handler, classify what happened. Nothing here writes to the database; the loop records the
outcome through ``taskqueue.store``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
import traceback as tb_module
from collections.abc import Coroutine
from typing import Any

from django.db import transaction

from taskqueue import store
from taskqueue.context import TaskContext
from taskqueue.core.limits import check_delay_seconds
from taskqueue.core.outcome import (
    MAX_ERROR_CHARS,
    MAX_ERROR_TYPE_CHARS,
    MAX_TRACEBACK_CHARS,
    Outcome,
    OutcomeKind,
    recordable,
)
from taskqueue.core.payloads import check_json
from taskqueue.core.registry import HandlerSpec, registry
from taskqueue.core.retry import NoRetry, bounded_delay, next_delay, strategy_from_dict
from taskqueue.exceptions import (
    ClaimLost,
    HandlerTimeout,
    InvalidPayload,
    InvalidResult,
    InvalidTaskOption,
    PermanentError,
    Retry,
    UnknownTaskType,
)
from taskqueue.models import AttemptOutcome
from taskqueue.store import ClaimedTask


class AsyncRunner:
    """One event loop in a thread of its own, shared by every ``async def`` handler."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._running: dict[Any, concurrent.futures.Future[Any]] = {}

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None, key: Any = None) -> Any:
        """Run ``coro`` on the loop and wait for it; ``key`` lets ``cancel`` find it."""
        future = asyncio.run_coroutine_threadsafe(_with_timeout(coro, timeout), self._ensure_loop())
        if key is None:
            return future.result()
        with self._lock:
            self._running[key] = future
        try:
            return future.result()
        finally:
            with self._lock:
                self._running.pop(key, None)

    def cancel(self, key: Any) -> bool:
        """Cancel the coroutine run under ``key``; False when none is running."""
        with self._lock:
            future = self._running.get(key)
        # The waiting thread gets CancelledError at once; the coroutine at its next await.
        return future is not None and future.cancel()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="taskqueue-async", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None


async def _with_timeout(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    if timeout is None:
        return await coro
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await coro
    except TimeoutError:
        # A TimeoutError the handler raised itself is an ordinary failure, not ours.
        if deadline.expired():
            raise HandlerTimeout(f"timed out after {timeout:g} s") from None
        raise


def execute(
    task: ClaimedTask, worker_id: str, async_runner: AsyncRunner, rng: random.Random
) -> tuple[Outcome, TaskContext | None]:
    """Run one claimed task and classify the result."""
    started = time.monotonic()

    def dead(error_type: str, error: str, traceback: str = "") -> Outcome:
        return Outcome.dead(time.monotonic() - started, error_type, error, traceback)

    try:
        spec = registry.get(task.task_type)
    except UnknownTaskType as exc:
        return dead("UnknownTaskType", str(exc)), None
    if not isinstance(task.payload, dict):
        return dead(
            "InvalidPayload",
            f"payload is a JSON {type(task.payload).__name__}, not an object of keyword arguments",
        ), None
    context = TaskContext(
        task_id=task.id,
        task_type=task.task_type,
        queue=task.queue,
        attempt=task.attempts,
        max_attempts=task.max_attempts,
        worker_id=worker_id,
        lease_id=task.lease_id,
    )
    try:
        bound = spec.bind_payload(task.payload, context)
    except TypeError as exc:
        return dead(
            "InvalidPayload", f"payload does not match handler {spec.name!r}{spec.signature}: {exc}"
        ), context
    try:
        if spec.atomic:
            _call_atomically(task, spec, bound.args, bound.kwargs, async_runner)
            return Outcome.committed(time.monotonic() - started), context
        result = _checked_result(
            _call(spec, bound.args, bound.kwargs, task.timeout, async_runner, key=task.id)
        )
    except ClaimLost as exc:
        return Outcome.lost(time.monotonic() - started, str(exc)), context
    except InvalidResult as exc:
        return dead("InvalidResult", str(exc)), context
    except Retry as exc:
        try:
            delay = None if exc.delay is None else check_delay_seconds(exc.delay, "Retry delay")
        except InvalidTaskOption as refused:
            # A delay no run_at can hold: the attempt failed with that error (the traceback
            # shows the handler's raise), and the strategy decides what follows.
            return _failure(task, spec, refused, started, rng, cause=exc), context
        return _failure(task, spec, exc, started, rng, requested_delay=delay), context
    except PermanentError as exc:
        return dead(_error_type(exc), exception_message(exc), _traceback(exc)), context
    except HandlerTimeout as exc:
        return _failure(task, spec, exc, started, rng, timed_out=True), context
    except Exception as exc:
        return _failure(task, spec, exc, started, rng), context
    return Outcome.succeeded(time.monotonic() - started, result), context


def _checked_result(result: Any) -> Any:
    try:
        check_json(result, "result")
    except InvalidPayload as exc:
        raise InvalidResult(f"handler returned a result that cannot be stored: {exc}") from None
    return result


def _call_atomically(
    task: ClaimedTask,
    spec: HandlerSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    async_runner: AsyncRunner,
) -> None:
    """Run the handler and complete the task in one transaction on the queue's database.

    If the claim was lost meanwhile, everything the handler wrote is rolled back with it.
    """
    with transaction.atomic(using=store.database_alias()):
        result = _checked_result(_call(spec, args, kwargs, task.timeout, async_runner, task.id))
        if not store.complete_one(task, result):
            raise ClaimLost(f"task {task.id} was taken from this worker; rolled back its effects")


def _call(
    spec: HandlerSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
    async_runner: AsyncRunner,
    key: Any = None,
) -> Any:
    if spec.is_async:
        return async_runner.run(spec.func(*args, **kwargs), timeout, key)
    return spec.func(*args, **kwargs)


def _failure(
    task: ClaimedTask,
    spec: HandlerSpec,
    exc: BaseException,
    started: float,
    rng: random.Random,
    *,
    requested_delay: float | None = None,
    timed_out: bool = False,
    cause: BaseException | None = None,
) -> Outcome:
    error = exception_message(exc)
    if isinstance(exc, Retry) and task.attempts >= task.max_attempts:
        error = f"{error} (no attempts left: {task.attempts} of {task.max_attempts} used)"
    return failed_attempt(
        task,
        rng,
        duration=time.monotonic() - started,
        error_type="TimeoutError" if timed_out else _error_type(exc),
        error=error,
        traceback=(
            _traceback(exc)
            if cause is None
            else f"{_traceback(cause)}\n{_error_type(exc)}: {error}"
        ),
        attempt_outcome=AttemptOutcome.TIMED_OUT if timed_out else AttemptOutcome.FAILED,
        requested_delay=requested_delay,
    )


def failed_attempt(
    task: ClaimedTask,
    rng: random.Random,
    *,
    duration: float,
    error_type: str,
    error: str,
    traceback: str = "",
    attempt_outcome: str = AttemptOutcome.FAILED,
    requested_delay: float | None = None,
) -> Outcome:
    """Classify a failed attempt: retry after the strategy's delay, or dead when spent.

    Also used for failures seen from outside the handler: a timeout kill, a crashed child.
    Its texts are made recordable here (cut to size, unstorable characters escaped).
    """
    strategy = strategy_from_dict(task.retry)
    if task.attempts >= task.max_attempts or isinstance(strategy, NoRetry):
        kind, delay = OutcomeKind.DEAD, 0.0
    else:
        kind = OutcomeKind.RETRY
        delay = (
            bounded_delay(requested_delay)
            if requested_delay is not None
            else next_delay(task.attempts, strategy, rng)
        )
    return Outcome(
        kind,
        duration,
        delay=delay,
        error_type=recordable(error_type, MAX_ERROR_TYPE_CHARS),
        error=recordable(error, MAX_ERROR_CHARS),
        traceback=recordable(traceback, MAX_TRACEBACK_CHARS),
        attempt_outcome=attempt_outcome,
    )


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def exception_message(exc: BaseException) -> str:
    """Return the message of ``exc`` (its type name when empty), even if ``str()`` fails."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # a handler's exception whose __str__ itself fails
        return f"<{type(exc).__name__}: its message could not be read>"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(tb_module.format_exception(exc))
    except Exception:
        return ""
