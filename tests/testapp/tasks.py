"""Handlers the tests enqueue; worker subprocesses discover them like any project's tasks.py."""

import asyncio
import os

from django.db import connection

import taskqueue


@taskqueue.handler("noop")
def noop() -> None:
    return None


@taskqueue.handler("echo")
def echo(value=None):
    return {"value": value}


@taskqueue.handler("add", priority="high")
def add(a: int, b: int) -> int:
    return a + b


@taskqueue.handler("ledger")
def ledger(n: int) -> None:
    """Record one execution per call, with the worker's pid, in its own table."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_ledgerentry (n, pid) VALUES (%s, %s)", [n, os.getpid()])


@taskqueue.handler("always_fails", max_attempts=3, retry=taskqueue.Fixed(0))
def always_fails(message: str = "boom") -> None:
    raise ValueError(message)


@taskqueue.handler("fails_then_succeeds", max_attempts=3, retry=taskqueue.Fixed(0))
def fails_then_succeeds(key: str, failures: int) -> str:
    from tests.testapp.models import Counter

    counter, _ = Counter.objects.get_or_create(key=key)
    counter.value += 1
    counter.save()
    if counter.value <= failures:
        raise RuntimeError(f"failure {counter.value} of {failures}")
    return f"succeeded on attempt {counter.value}"


@taskqueue.handler("permanent")
def permanent() -> None:
    raise taskqueue.PermanentError("card declined")


@taskqueue.handler("asks_retry", max_attempts=2)
def asks_retry(delay: float = 0) -> None:
    raise taskqueue.Retry("not ready", delay=delay)


@taskqueue.handler("async_add")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@taskqueue.handler("async_slow", timeout=0.2, max_attempts=1)
async def async_slow() -> None:
    await asyncio.sleep(30)


@taskqueue.handler("with_context", takes_context=True)
def with_context(ctx: taskqueue.TaskContext, label: str) -> dict:
    ctx.set_progress(1.0, "done")
    return {"attempt": ctx.attempt, "label": label}


@taskqueue.handler("bad_result")
def bad_result() -> object:
    return object()


@taskqueue.handler("sleepy", queue="slow")
def sleepy(seconds: float) -> None:
    import time

    time.sleep(seconds)  # the handler's own work, not test synchronisation


@taskqueue.handler("linear_retry", max_attempts=3, retry=taskqueue.Linear(base=30, step=10))
def linear_retry() -> None:
    raise RuntimeError("still broken")


@taskqueue.handler("marked_sleep", queue="slow")
def marked_sleep(key: str, seconds: float) -> None:
    """Leave a Counter row saying the handler has started, then sleep: tests poll for the row."""
    import time

    from tests.testapp.models import Counter

    Counter.objects.create(key=key)
    time.sleep(seconds)  # the handler's own work, not test synchronisation


@taskqueue.handler("slow_first_attempt", queue="slow", takes_context=True, max_attempts=3)
def slow_first_attempt(ctx: taskqueue.TaskContext, key: str, seconds: float) -> dict:
    """Attempt 1 marks its start and works for ``seconds``; later attempts return at once."""
    import time

    from tests.testapp.models import Counter

    if ctx.attempt == 1:
        Counter.objects.create(key=key)
        time.sleep(seconds)  # the handler's own work, not test synchronisation
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@taskqueue.handler("crash_worker", priority="critical", max_attempts=2)
def crash_worker() -> None:
    """Kill the worker process running this task, as a segfaulting C extension would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
